"""The run config: its schema (:mod:`.schema`) and reading, writing and overriding it (:mod:`.io`)."""

from nntune.config.io import (build_config, load_config, save_config, apply_overrides, parse_duration)
from nntune.config.schema import (ACTIVATIONS, SCALERS, SCHEDULES, OPTIMIZERS, SAMPLERS, PRUNERS, BUILTIN_DATASETS,
                                  DEFAULT_TRIALS, EVIDENCE_QUESTIONS, DataConfig, PreprocessConfig, ModelConfig,
                                  ScheduleConfig, EarlyStoppingConfig, TrainConfig, OBJECTIVES, parse_objectives,
                                  SearchConfig, FinetuneConfig, unknown_question, check_questions, EvidenceConfig,
                                  RunConfig)

__all__ = [
    "ACTIVATIONS", "BUILTIN_DATASETS", "DEFAULT_TRIALS", "DataConfig", "EVIDENCE_QUESTIONS", "EarlyStoppingConfig",
    "EvidenceConfig", "FinetuneConfig", "ModelConfig", "OBJECTIVES", "OPTIMIZERS", "PRUNERS", "PreprocessConfig",
    "RunConfig", "SAMPLERS", "SCALERS", "SCHEDULES", "ScheduleConfig", "SearchConfig", "TrainConfig",
    "apply_overrides", "build_config", "check_questions", "load_config", "parse_duration", "parse_objectives",
    "save_config", "unknown_question",
]
