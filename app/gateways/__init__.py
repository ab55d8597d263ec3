"""Outside roles (patients, archive, EMR): one Protocol each, embedded default + real ones."""
