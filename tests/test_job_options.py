"""Job, launcher and figure options: each declared once (data/jobs.py, TrackerSettings,
LaunchSettings, SlurmSettings, the figure scripts' options); every script's flags are generated
from the declarations and read back into the same objects."""
from dataclasses import fields
from pathlib import Path

import pytest

import inference_emission
import lottery_ticket
import lottery_ticket_emissions
import lottery_ticket_performance
import post_training_inference
import post_training_inference_emissions
from archs.launch.settings import LaunchSettings, SlurmSettings, launch_settings_from_args
from data.energy.emissions import TrackerSettings, tracker_settings_from_args
from data.jobs import InferenceJob, ReplayCommand, TrainingCommand, TrainingOptions
from data.report.plot_cli import BreakEvenOptions, PerformanceOptions, PlotOptions
from data.runs import RunConfig
from data.settings import flag_name, flagged, values_from_args

DECLARED = (RunConfig, TrainingOptions, TrainingCommand, InferenceJob, ReplayCommand, TrackerSettings,
            LaunchSettings, SlurmSettings, PlotOptions, PerformanceOptions, BreakEvenOptions)
SELECTION = "selecting runs"   # data.selection.add_selection_arguments' group, declared once there
SCRIPTS = (lottery_ticket, post_training_inference, lottery_ticket_performance, lottery_ticket_emissions,
           post_training_inference_emissions, inference_emission)


def declarations() -> dict[str, list]:
    """Flag name -> the fields that declare it."""
    found: dict[str, list] = {}
    for cls in DECLARED:
        for f in fields(cls):
            if f.metadata:
                found.setdefault(flag_name(f), []).append(f)
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda m: m.__name__)
def test_every_flag_comes_from_a_declaration_with_its_default(script):
    declared = declarations()
    parser = script.build_parser()
    selection = [a for g in parser._action_groups if g.title.startswith(SELECTION) for a in g._group_actions]
    for action in parser._actions:
        if action.dest == "help" or action in selection:
            continue
        assert action.dest in declared, f"{script.__name__} --{action.dest} is written by hand"
        defaults = {repr(f.default) for f in declared[action.dest]}
        if action.const is None:   # not a switch: argparse holds the declared default
            shown = tuple(action.default) if isinstance(action.default, list) else action.default
            assert repr(shown) in defaults, f"--{action.dest}: {action.default!r} is not declared"


def test_each_job_option_is_declared_once():
    # Flags that two declarations share are the same option in two jobs (which runs: network,
    # dataset, folders; how: device, threads, the progress bar), never two defaults of one job.
    job_classes = (TrainingOptions, TrainingCommand, TrackerSettings, LaunchSettings, SlurmSettings)
    names = [flag_name(f) for cls in job_classes for f in flagged(cls)]
    assert len(names) == len(set(names))
    replay = [flag_name(f) for cls in (InferenceJob, ReplayCommand, TrackerSettings, LaunchSettings,
                                       SlurmSettings) for f in flagged(cls)]
    assert len(replay) == len(set(replay))


def test_training_options_read_back_from_their_flags():
    parser = lottery_ticket.build_parser()
    options = TrainingOptions(**values_from_args(flagged(TrainingOptions), parser.parse_args([])))
    assert options == TrainingOptions() and options.seeds == [0, 1, 2, 3, 4]
    args = parser.parse_args(["--no_progress", "--compile", "--save_cycle_weights", "none", "--seeds", "3", "4",
                              "--threads", "2", "--data_dir", "d", "--measure_power_secs", "2"])
    options = TrainingOptions(**values_from_args(flagged(TrainingOptions), args))
    assert options == TrainingOptions(seeds=[3, 4], show_progress=False, compile_model=True,
                                      cycle_weights="none", threads=2, data_dir=Path("d"))
    assert tracker_settings_from_args(args) == TrackerSettings(measure_power_secs=2.0)


def test_replay_options_read_back_from_their_flags():
    parser = post_training_inference.build_parser()
    values = values_from_args(flagged(InferenceJob), parser.parse_args([]))
    assert InferenceJob(**values) == InferenceJob()
    args = parser.parse_args(["--arch_type", "lenet5", "--passes", "3", "--wait", "--no_progress", "--mode", "both"])
    assert InferenceJob(**values_from_args(flagged(InferenceJob), args)) == InferenceJob(
        arch="lenet5", passes=3, wait=True, show_progress=False, mode="both")


def test_launch_settings_read_back_from_their_flags(tmp_path):
    parser = lottery_ticket.build_parser()
    assert launch_settings_from_args(parser.parse_args([]), tmp_path) == LaunchSettings(folder=tmp_path / "launch")
    args = parser.parse_args(["--launcher", "slurm", "--slurm_time", "1:30:00", "--slurm_additional", "qos=high",
                              "exclusive", "--no_wait", "--no_progress"])
    assert launch_settings_from_args(args, tmp_path) == LaunchSettings(
        launcher="slurm", wait=False, folder=tmp_path / "launch", show_progress=False,
        slurm=SlurmSettings(time_min=90, additional=(("qos", "high"), ("exclusive", True))))
