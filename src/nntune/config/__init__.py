"""The run config: its schema (:mod:`.schema`) and reading, writing and overriding it (:mod:`.io`)."""

from nntune.config.io import apply_overrides, build_config, load_config, parse_duration, save_config
from nntune.config.schema import (ACTIVATIONS, BUILTIN_DATASETS, DEFAULT_TRIALS, DROPOUT_PLACES, EVIDENCE_QUESTIONS,
                                  MODEL_PRESETS, OBJECTIVES, OPTIMIZERS, PRUNERS, SAMPLERS, SCALERS, SCHEDULES,
                                  DataConfig, EarlyStoppingConfig, EvidenceConfig, FinetuneConfig, ModelConfig,
                                  PreprocessConfig, RunConfig, ScheduleConfig, SearchConfig, TrainConfig,
                                  check_questions, parse_objectives, unknown_question)

__all__ = [
    "ACTIVATIONS", "BUILTIN_DATASETS", "DEFAULT_TRIALS", "DROPOUT_PLACES", "DataConfig", "EVIDENCE_QUESTIONS",
    "EarlyStoppingConfig", "EvidenceConfig", "FinetuneConfig", "MODEL_PRESETS", "ModelConfig", "OBJECTIVES",
    "OPTIMIZERS", "PRUNERS", "PreprocessConfig", "RunConfig", "SAMPLERS", "SCALERS", "SCHEDULES", "ScheduleConfig",
    "SearchConfig", "TrainConfig", "apply_overrides", "build_config", "check_questions", "load_config",
    "parse_duration", "parse_objectives", "save_config", "unknown_question",
]
