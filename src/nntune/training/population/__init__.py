"""The population engine: K members of one architecture trained at once (see :mod:`.engine`)."""

from nntune.training.population.engine import MemberHandle, PopulationTrainer

__all__ = ["MemberHandle", "PopulationTrainer"]
