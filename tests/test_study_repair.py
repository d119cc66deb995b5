"""A resumed study repairs the trials a kill left RUNNING in its journal, from what is on disk (no Ray, no search):
a trial killed mid-run runs again with its configuration; one killed while it was being proposed (some of its
parameters written, not all) was never built and is not run as a different configuration."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from autocompress.engine.state import RunState
from autocompress.engine.study import distributions, open_study
from autocompress.results.records import TrialState
from autocompress.results.rundir import RunDir
from autocompress.space import GroupChoice, LayerChoice, SearchSpace

SPACE = SearchSpace(groups=[GroupChoice("a", 32, ("a",), [0.0, 0.25, 0.5], [32, 24, 16]),
                            GroupChoice("b", 32, ("b",), [0.0, 0.25, 0.5], [32, 24, 16])],
                    layers=[LayerChoice("a", ["fp32", "int8"]), LayerChoice("b", ["fp32", "int8"])],
                    round_to=8, min_channels=8)


def _killed_run(tmp_path) -> RunState:
    """A journal as a kill leaves it: trial 0 asked in full and running, trial 1 with 2 of its 4 parameters."""
    state = RunState(RunDir(tmp_path), {})
    storage = JournalStorage(JournalFileBackend(str(state.rd.journal)))
    study = optuna.create_study(study_name="run", storage=storage, directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.ask(distributions(SPACE))
    partial = study.ask()
    for name, dist in list(distributions(SPACE).items())[:2]:
        partial._suggest(name, dist)
    return state


def test_a_trial_killed_mid_run_runs_again_and_one_killed_while_proposed_does_not(tmp_path):
    state = _killed_run(tmp_path)
    lines: list[str] = []
    study = open_study(state, run_name="run", sampler=optuna.samplers.RandomSampler(seed=1), space=SPACE, first=[],
                       log=lines.append)
    full, partial = study.trials[0], study.trials[1]
    for t in (full, partial):
        assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["interrupted"] is True
        assert state.records[t.number].state is TrialState.INTERRUPTED
    assert len(partial.params) == 2 and "never built" in state.records[1].error
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [w.system_attrs["fixed_params"] for w in waiting] == [full.params]  # only the whole configuration
    assert study.ask(distributions(SPACE)).params == full.params  # and it is the next one asked
    assert any("trial 0 was interrupted: " in s and "queued to run again" in s for s in lines)
    assert any("trial 1 was interrupted while it was proposed" in s for s in lines)
