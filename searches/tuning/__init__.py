"""The Optuna tuner: knobs (hyperparameters, variants) that gradients cannot reach.

Every knob of a space becomes a trial suggestion; a trial runs a budgeted search + derive + short
retrain (or only a retrain of a given architecture with the trial's knobs) and reports the
space's selection metric to the pruner every epoch. Studies live in a journal file in the run
folder or in a database (PostgreSQL) that workers on many machines share.
"""
from nasseg.searches.tuning.objective import (OBJECTIVES, TrialSetup, apply_knobs, measure_latency,
                                              run_trial)
from nasseg.searches.tuning.storage import StudyStorage, open_storage
from nasseg.searches.tuning.study import (TuneConfig, TuneResult, counted_trials, format_table,
                                          run_study, trial_rows, write_results)
from nasseg.searches.tuning.suggest import (knob_distribution, knob_order, suggest_knob,
                                            suggest_knobs, tunable_knobs)

__all__ = ["TuneConfig", "TuneResult", "run_study", "write_results", "trial_rows", "format_table",
           "counted_trials", "TrialSetup", "run_trial", "apply_knobs", "measure_latency",
           "OBJECTIVES", "StudyStorage", "open_storage", "knob_distribution", "knob_order",
           "suggest_knob", "suggest_knobs", "tunable_knobs"]
