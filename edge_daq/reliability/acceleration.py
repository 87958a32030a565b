"""Acceleration models and the chi-squared failure rate (FIT) at use conditions.

Each model gives an acceleration factor AF = life at use / life at stress. Temperatures are in degC
(converted to kelvin), k = 8.617e-5 eV/K, Ea in eV:

- ``arrhenius``: AF = exp(Ea/k * (1/T_use - 1/T_stress))
- ``peck`` (THB, HAST): AF = (RH_stress / RH_use)^n * exp(Ea/k * (1/T_use - 1/T_stress))
- ``inverse-power-law`` (voltage): AF = (V_stress / V_use)^n
- ``coffin-manson`` (temperature cycling): AF = (dT_stress / dT_use)^n, in cycles to failure
- ``norris-landzberg`` (temperature cycling, solder): AF = (dT_stress / dT_use)^n * (f_use / f_stress)^m
  * exp(Ea/k * (1/Tmax_use - 1/Tmax_stress)), in cycles to failure; f in cycles per day. The dwell at the
  extremes enters through f: a cycle lasts its two ramps and its two dwells, so a longer dwell is a lower f.

For the cycling models AF is a ratio of cycles; one stress hour is AF * f_stress / f_use use hours (the same
number of cycles at the use frequency). f_stress defaults to the cycles the rig counted per stress day
(``stress.cycling``). The time factor of several models is the product of theirs (e.g. Arrhenius with
voltage for HTOL, as JEDEC JEP122 combines them).

FIT (failures per 1e9 device-hours) at one-sided confidence CL with r failures over H device-hours at
stress: FIT = chi2(CL; 2r + 2) / (2 * H * time factor) * 1e9 (time-terminated test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from edge_daq.config.types import StrictModel

BOLTZMANN_EV = 8.617333262e-5
KELVIN = 273.15
HOURS_PER_DAY = 24.0

Celsius = Annotated[float, Field(gt=-KELVIN, le=1000)]
Positive = Annotated[float, Field(gt=0)]
ActivationEnergy = Annotated[float, Field(ge=0, le=5)]
"""eV"""
Exponent = Annotated[float, Field(ge=0, le=50)]
RelativeHumidity = Annotated[float, Field(gt=0, le=100)]
"""% RH"""


def arrhenius_factor(ea_ev: float, use_c: float, stress_c: float) -> float:
    return math.exp(ea_ev / BOLTZMANN_EV * (1 / (use_c + KELVIN) - 1 / (stress_c + KELVIN)))


@dataclass(frozen=True, slots=True)
class Factor:
    """An acceleration factor and what one stress hour is worth at use conditions."""

    model: str
    af: float
    use_hours_per_stress_hour: float
    description: str
    per_cycle: bool = False  # AF is a ratio of cycles to failure


@dataclass(frozen=True, slots=True)
class StressFacts:
    """What the report knows of the stress that ran: the measured cycle rate, if cycles were counted."""

    cycles_per_day: float | None = None


class Arrhenius(StrictModel):
    model: Literal["arrhenius"]
    ea: ActivationEnergy
    use_temp: Celsius
    stress_temp: Celsius

    def factor(self, facts: StressFacts) -> Factor:
        af = arrhenius_factor(self.ea, self.use_temp, self.stress_temp)
        text = f"Ea {self.ea:g} eV, {self.use_temp:g} -> {self.stress_temp:g} degC"
        return Factor("Arrhenius", af, af, text)


class Peck(StrictModel):
    model: Literal["peck"]
    ea: ActivationEnergy
    exponent: Exponent
    """The humidity exponent n (Peck's 1986 fit: 2.66 with Ea 0.79 eV)."""
    use_temp: Celsius
    stress_temp: Celsius
    use_rh: RelativeHumidity
    stress_rh: RelativeHumidity

    def factor(self, facts: StressFacts) -> Factor:
        humidity = (self.stress_rh / self.use_rh) ** self.exponent
        af = humidity * arrhenius_factor(self.ea, self.use_temp, self.stress_temp)
        text = (
            f"Ea {self.ea:g} eV, n {self.exponent:g}, {self.use_temp:g} degC/{self.use_rh:g} %RH -> "
            f"{self.stress_temp:g} degC/{self.stress_rh:g} %RH"
        )
        return Factor("Peck", af, af, text)


class InversePowerLaw(StrictModel):
    model: Literal["inverse-power-law"]
    exponent: Exponent
    use_voltage: Positive
    stress_voltage: Positive

    def factor(self, facts: StressFacts) -> Factor:
        af = (self.stress_voltage / self.use_voltage) ** self.exponent
        text = f"n {self.exponent:g}, {self.use_voltage:g} -> {self.stress_voltage:g} V"
        return Factor("inverse power law", af, af, text)


class _Cycling(StrictModel):
    exponent: Exponent
    """The dT exponent (Coffin-Manson: about 2 for solder fatigue, 4 and more for brittle cracks)."""
    use_delta_t: Positive
    stress_delta_t: Positive
    use_cycles_per_day: Positive
    stress_cycles_per_day: Positive | None = None
    """Default: the cycles the rig counted per stress day (``stress.cycling``)."""

    def _stress_frequency(self, facts: StressFacts) -> float:
        frequency = self.stress_cycles_per_day or facts.cycles_per_day
        if not frequency:
            raise ValueError(
                f"{self.model_name} needs stress_cycles_per_day: the rig counted no temperature cycles to measure it"
            )
        return frequency

    @property
    def model_name(self) -> str:
        raise NotImplementedError


class CoffinManson(_Cycling):
    model: Literal["coffin-manson"]

    @property
    def model_name(self) -> str:
        return "Coffin-Manson"

    def factor(self, facts: StressFacts) -> Factor:
        f_stress = self._stress_frequency(facts)
        af = (self.stress_delta_t / self.use_delta_t) ** self.exponent
        text = (
            f"n {self.exponent:g}, dT {self.use_delta_t:g} -> {self.stress_delta_t:g} K, "
            f"{self.use_cycles_per_day:g} -> {f_stress:.3g} cycles/day"
        )
        return Factor(self.model_name, af, af * f_stress / self.use_cycles_per_day, text, per_cycle=True)


class NorrisLandzberg(_Cycling):
    model: Literal["norris-landzberg"]
    frequency_exponent: Exponent
    """m on (f_use / f_stress) (Norris and Landzberg: 1/3 for SnPb solder)."""
    ea: ActivationEnergy
    """Of the maximum-temperature term (Norris and Landzberg: 0.122 eV, i.e. Ea/k = 1414 K)."""
    use_max_temp: Celsius
    stress_max_temp: Celsius

    @property
    def model_name(self) -> str:
        return "Norris-Landzberg"

    def factor(self, facts: StressFacts) -> Factor:
        f_stress = self._stress_frequency(facts)
        af = (
            (self.stress_delta_t / self.use_delta_t) ** self.exponent
            * (self.use_cycles_per_day / f_stress) ** self.frequency_exponent
            * arrhenius_factor(self.ea, self.use_max_temp, self.stress_max_temp)
        )
        text = (
            f"n {self.exponent:g}, m {self.frequency_exponent:g}, Ea {self.ea:g} eV, dT {self.use_delta_t:g} -> "
            f"{self.stress_delta_t:g} K, Tmax {self.use_max_temp:g} -> {self.stress_max_temp:g} degC, "
            f"{self.use_cycles_per_day:g} -> {f_stress:.3g} cycles/day"
        )
        return Factor(self.model_name, af, af * f_stress / self.use_cycles_per_day, text, per_cycle=True)


AccelerationModel = Annotated[
    Arrhenius | Peck | InversePowerLaw | CoffinManson | NorrisLandzberg, Field(discriminator="model")
]
"""One entry of a rig file's ``acceleration:`` list (or of ``edge-daq report --model``)."""
MODEL_NAMES = ("arrhenius", "peck", "inverse-power-law", "coffin-manson", "norris-landzberg")
MODEL_ADAPTER: TypeAdapter[AccelerationModel] = TypeAdapter(AccelerationModel)


def parse_model(text: str) -> AccelerationModel:
    """``NAME:key=value,key=value`` (the command line's form of a rig file entry); ValueError says what is wrong."""
    from pydantic import ValidationError

    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown acceleration model {name!r} (one of {', '.join(MODEL_NAMES)})")
    values: dict[str, object] = {"model": name}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{name}: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    try:
        return MODEL_ADAPTER.validate_python(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'][1:]) or name}: {issue['msg']}" for issue in error.errors()
        )
        raise ValueError(f"{name}: {problems}") from None


def combine(factors: Sequence[Factor]) -> float:
    """Use hours per stress hour of several models applied together (1 without any)."""
    return math.prod(factor.use_hours_per_stress_hour for factor in factors)


def fit_rate(failures: int, hours: float, confidence: float, acceleration: float = 1.0) -> float | None:
    """Upper bound of the failure rate in FIT at one-sided ``confidence``; None without device-hours."""
    if not hours > 0 or not acceleration > 0:
        return None
    try:
        from scipy.stats import chi2
    except ImportError as error:
        raise RuntimeError("the failure rate needs SciPy: pip install 'edge-daq[analysis]'") from error
    return float(chi2.ppf(confidence, 2 * failures + 2)) / (2 * hours * acceleration) * 1e9
