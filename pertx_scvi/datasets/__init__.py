"""Data sets: real-data loaders (read from a local data folder) and the built-in simulator."""

from ._papalexi import PERTURBENCH_SCREENS, norman2019_fixture, papalexi2021, perturbench
from ._paths import cache_dir, data_dir, find_data_file
from ._simulate import simulate

__all__ = [
    "PERTURBENCH_SCREENS",
    "cache_dir",
    "data_dir",
    "find_data_file",
    "norman2019_fixture",
    "papalexi2021",
    "perturbench",
    "simulate",
]
