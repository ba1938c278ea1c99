"""Typed configuration: the schema (schema.py) and its loader from YAML and dotted flags (loader.py)."""

from textvae.config.loader import dump_config, from_dict, load_config, parse_overrides
from textvae.config.schema import (LOGGERS, PTB_ARCHIVE_URL, Config, DataConfig, DecoderConfig, EncoderConfig,
                                   EvalConfig, KLConfig, ModelConfig, OptimConfig, SplitNames, TrainerConfig, choices)

__all__ = ["dump_config", "from_dict", "load_config", "parse_overrides", "LOGGERS", "PTB_ARCHIVE_URL", "Config",
           "DataConfig", "DecoderConfig", "EncoderConfig", "EvalConfig", "KLConfig", "ModelConfig", "OptimConfig",
           "SplitNames", "TrainerConfig", "choices"]
