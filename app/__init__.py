"""ebiw-capture: encounter-based visible-light imaging."""
