"""Toxic-gas alarm levels from GB/T 50493-2019 and the unit conversion instruments need.

First level = 1x the occupational exposure limit, second level = 2x (GB/T 50493-2019 §5.5).
"""

from __future__ import annotations

from dataclasses import dataclass

# mg/m3 = ppm x molar mass / 24.45 (molar volume at 25 degC, 101.325 kPa)
MOLAR_VOLUME_L = 24.45


@dataclass(frozen=True, slots=True)
class Gas:
    code: str
    name_zh: str
    molar_mass: float  # g/mol
    first_mg_m3: float
    second_mg_m3: float

    def limits(self, unit: str) -> tuple[float, float]:
        """(first, second) alarm levels expressed in ``unit`` (mg/m3 or ppm)."""
        u = normalise_unit(unit)
        if u == "mg/m3":
            return self.first_mg_m3, self.second_mg_m3
        if u == "ppm":
            return mg_m3_to_ppm(self.first_mg_m3, self.molar_mass), mg_m3_to_ppm(
                self.second_mg_m3, self.molar_mass
            )
        raise ValueError(f"gas {self.code} is measured in mg/m3 or ppm, not {unit!r}")


def mg_m3_to_ppm(mg: float, molar_mass: float) -> float:
    return mg * MOLAR_VOLUME_L / molar_mass


def ppm_to_mg_m3(ppm: float, molar_mass: float) -> float:
    return ppm * molar_mass / MOLAR_VOLUME_L


def normalise_unit(unit: str) -> str:
    u = unit.strip().lower().replace("³", "3").replace(" ", "")
    return {"mg/m3": "mg/m3", "mg/m^3": "mg/m3", "ppm": "ppm"}.get(u, u)


GASES: dict[str, Gas] = {
    g.code: g
    for g in (
        Gas("H2S", "硫化氢", 34.08, 10, 20),
        Gas("CO", "一氧化碳", 28.01, 20, 40),
        Gas("NH3", "氨", 17.03, 20, 40),
        Gas("Cl2", "氯气", 70.90, 1, 2),
        Gas("C6H6", "苯", 78.11, 6, 12),
        Gas("SO2", "二氧化硫", 64.07, 5, 10),
        Gas("NO2", "二氧化氮", 46.01, 5, 10),
        Gas("HCl", "氯化氢", 36.46, 7.5, 15),
        Gas("HCN", "氰化氢", 27.03, 1, 2),
        Gas("COCl2", "光气", 98.92, 0.5, 1),
        Gas("CH3OH", "甲醇", 32.04, 25, 50),
        Gas("C7H8", "甲苯", 92.14, 50, 100),
        Gas("C8H10", "二甲苯", 106.17, 50, 100),
        Gas("CO2", "二氧化碳", 44.01, 9000, 18000),
    )
}

# Names operators write instead of the formula.
ALIASES: dict[str, str] = {
    "benzene": "C6H6", "苯": "C6H6", "phosgene": "COCl2", "光气": "COCl2",
    "methanol": "CH3OH", "甲醇": "CH3OH", "toluene": "C7H8", "甲苯": "C7H8",
    "xylene": "C8H10", "二甲苯": "C8H10", "硫化氢": "H2S", "一氧化碳": "CO", "氨": "NH3",
    "ammonia": "NH3", "氯气": "Cl2", "chlorine": "Cl2", "二氧化硫": "SO2", "二氧化氮": "NO2",
    "氯化氢": "HCl", "氰化氢": "HCN", "二氧化碳": "CO2",
}


def lookup_gas(name: str) -> Gas | None:
    """The gas by formula (case-insensitive) or common Chinese/English name."""
    key = ALIASES.get(name.strip(), ALIASES.get(name.strip().lower(), name.strip()))
    if key in GASES:
        return GASES[key]
    for code, gas in GASES.items():
        if code.lower() == key.lower():
            return gas
    return None
