"""Data sets: real-data loaders (read from a local data folder) and the built-in simulator."""

from ._papalexi import norman2019_fixture, papalexi2021
from ._paths import cache_dir, data_dir, find_data_file
from ._simulate import simulate

__all__ = [
    "cache_dir",
    "data_dir",
    "find_data_file",
    "norman2019_fixture",
    "papalexi2021",
    "simulate",
]
