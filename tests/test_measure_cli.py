"""``ebiw measure``: the JSON contract on real photos, a photo without a chart, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import cli
from app.pipeline.geometry import calibrate_photo
from tests.conftest import CHARTS

TILTED = CHARTS / "jtvd_classic_02.jpg"  # 1530 x 2040
NO_CHART = CHARTS / "karnehen_cam2_nochart.jpg"


def measure(*args: str, tmp_path: Path) -> Result:
    return CliRunner().invoke(cli, ["measure", *args], env={"EBIW_DATA_DIR": str(tmp_path)})


def test_lines_and_areas_in_the_order_given(tmp_path: Path) -> None:
    result = measure(
        str(TILTED),
        "--line",
        "200,300,1300,1800",
        "--line",
        "700,900,760,950",
        "--polygon",
        "300,400,900,420,880,1000,320,980",
        "--polygon",
        "100,100,200,100,150,200",
        tmp_path=tmp_path,
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    cal = calibrate_photo(TILTED.read_bytes())
    assert record["file"] == str(TILTED)
    assert record["lines_mm"] == [
        round(cal.length_mm((200, 300), (1300, 1800)).value, 2),
        round(cal.length_mm((700, 900), (760, 950)).value, 2),
    ]
    square = [(300, 400), (900, 420), (880, 1000), (320, 980)]
    assert record["areas_mm2"][0] == round(cal.area_mm2(square).value, 1)
    assert record["areas_mm2"][0] > 10 * record["areas_mm2"][1] > 0
    assert record["perimeters_mm"][0] == round(cal.perimeter_mm(square).value, 2)
    assert all(
        0 < u < 0.1 * v
        for u, v in zip(record["lines_uncertainty_mm"], record["lines_mm"], strict=True)
    )
    calibration = record["calibration"]
    assert calibration["chart_type"] == "classic24" and calibration["pitch_mm"] == 46.0
    assert calibration["fit_points"] >= 12 and 15 < calibration["tilt_deg"] < 40
    assert "plane of the colour chart" in calibration["assumption"]


def test_a_photo_without_a_chart_is_an_error_and_the_others_are_measured(tmp_path: Path) -> None:
    result = measure(str(NO_CHART), str(TILTED), "--line", "10,10,20,20", tmp_path=tmp_path)
    assert result.exit_code == 1
    missing, found = (json.loads(line) for line in result.output.splitlines())
    assert missing["lines_mm"] is None and missing["areas_mm2"] is None
    assert missing["calibration"] is None and "no colour chart" in missing["error"]
    assert found["lines_mm"][0] > 0 and "error" not in found


def test_a_point_outside_the_photo_is_an_error_naming_it(tmp_path: Path) -> None:
    result = measure(
        str(TILTED), "--line", "10,10,20,20", "--line", "100,100,1600,100", tmp_path=tmp_path
    )
    assert result.exit_code == 1
    record = json.loads(result.output)
    assert record["lines_mm"] is None
    assert record["error"].startswith("line 2: point (1600, 100) is outside the 1530 x 2040")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--polygon", "10,10,20,20,30,30"], "no area"),
        (["--polygon", "0,0,10,10,10,0,0,10"], "edges 1 and 3 cross"),
        (["--polygon", "0,0,10,10"], "at least 3 vertices"),
        (["--polygon", "0,0,10,10,5"], "x,y pairs"),
        (["--line", "1,2,3,4,5,6"], "a line is X1,Y1,X2,Y2"),
        (["--line", "1,2,3,x"], "numbers separated by commas"),
        (["--line", "5,5,5,5"], "same point"),
    ],
)
def test_malformed_or_degenerate_shapes_are_usage_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = measure(str(TILTED), *args, tmp_path=tmp_path)
    assert result.exit_code == 2
    assert message in result.output and result.output.count("{") == 0
