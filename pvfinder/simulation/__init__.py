"""Simulated LHCb Upgrade I samples with MC truth (the yardstick of the physics performance)."""

from __future__ import annotations

from .conditions import Conditions
from .generator import SimulatedSample, TrackOrigin, simulate

__all__ = ["Conditions", "SimulatedSample", "TrackOrigin", "simulate"]
