"""JSON Schemas of the gateway file, rig files and profiles, generated from the config models.

An editor with a YAML language server (VS Code's YAML extension) reads them from the first line of a file,
``# yaml-language-server: $schema=...``, and completes keys and flags typos while a technician types. The
loader stays the judge: the schemas check shape (keys, types, enums, patterns), not what needs the other
files (profiles merged in, point references, DUT sockets). They are draft-07, the draft editors support.

What pydantic cannot see is added here, from the same registries the loader uses:

- an instrument is the model of its ``driver:`` (one ``if``/``then`` per registered driver); an instrument
  with a ``profile:`` may leave out any key (the profile supplies it), a profile file too;
- ``channels:`` of an instrument holds that driver's points;
- ``outputs:`` maps a name to an entry with ``type:``; a key that is a type name may leave ``type:`` out
  (``influxdb: {url: ...}``), and an empty entry is no output.

``edge-daq schema --write-dir config/schemas`` regenerates the shipped copies; a unit test fails when they
are stale.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edge_daq import drivers
from edge_daq.config.loader import shipped_profiles_folder
from edge_daq.config.models import GatewayConfig, RigConfig
from edge_daq.config.types import NAME_PATTERN
from edge_daq.reliability.config import ChannelsConfig
from edge_daq.sinks import registry as outputs_registry

SchemaKind = Literal["gateway", "rig", "profile"]
KINDS: tuple[SchemaKind, ...] = ("gateway", "rig", "profile")
DRAFT = "http://json-schema.org/draft-07/schema#"
_REF = "#/$defs/{model}"

Schema = dict[str, Any]


def file_name(kind: SchemaKind) -> str:
    return f"{kind}.schema.json"


def shipped_folder() -> Path:
    """The shipped schemas: inside the wheel, or ``config/schemas`` of a checkout (an editable install)."""
    import edge_daq

    package = Path(edge_daq.__file__).parent
    installed = package / "_shipped_config" / "schemas"
    return installed if installed.is_dir() else package.parent / "config" / "schemas"


def render(kind: SchemaKind) -> str:
    """The schema of ``kind`` as the text of its shipped file."""
    return json.dumps(schema(kind), indent=2, ensure_ascii=False) + "\n"


def schema(kind: SchemaKind) -> Schema:
    defs = _model_defs()
    if kind == "gateway":
        root = defs.pop(GatewayConfig.__name__)
        defs["OutputsConfig"] = _outputs(defs)
        title, what = "edge-daq gateway file", "The gateway file: outputs, buffer, HTTP endpoint, logging."
    elif kind == "rig":
        root = defs.pop(RigConfig.__name__)
        defs["Instrument"] = _instrument(defs)
        root["properties"]["instruments"]["items"] = {"$ref": _REF.format(model="Instrument")}
        title, what = "edge-daq rig file", "A rig file: one test rig's instruments, tags, DUTs and test."
    else:
        root = _profile(defs)
        title, what = "edge-daq profile", "A profile: a reusable instrument definition, named by profile:."
    document: Schema = {"$schema": DRAFT, "title": title, "description": what}
    document.update({key: value for key, value in root.items() if key not in ("title", "description")})
    document["$defs"] = defs
    tidy: Schema = _tidy(_prune(document))
    return tidy


def _model_defs() -> dict[str, Schema]:
    """Every model's schema in one ``$defs`` (shared definitions appear once)."""
    models: list[type[BaseModel]] = [GatewayConfig, RigConfig, ChannelsConfig]
    models += [drivers.config_model(name) for name in drivers.driver_names()]
    models += [outputs_registry.config_model(name) for name in outputs_registry.type_names()]
    keys, top = models_json_schema([(model, "validation") for model in models], ref_template=_REF)
    defs: dict[str, Schema] = top["$defs"]
    for (model, _), entry in keys.items():  # every model by its own name, for the lookups below
        name = entry["$ref"].rsplit("/", 1)[1]
        if name != model.__name__:
            raise RuntimeError(f"two config models are named {model.__name__}")
    return defs


def _def_name(model: type[BaseModel]) -> str:
    return model.__name__


# ---- outputs -------------------------------------------------------------------------------------------------


def _outputs(defs: dict[str, Schema]) -> Schema:
    types = outputs_registry.type_names()
    for name in types:
        model_def = defs.pop(_def_name(outputs_registry.config_model(name)))
        properties = {"type": {"const": name, "description": f"the output type ({', '.join(types)})"}}
        model_def["properties"] = {**properties, **model_def.get("properties", {})}
        defs[f"output-{name}"] = model_def
    typed: Schema = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": types}},
        "allOf": [_when("type", name, f"output-{name}") for name in types],
    }
    defs["Output"] = typed
    output = {"$ref": _REF.format(model="Output")}
    return {
        "description": "Output instances by name: {name: {type: influxdb | mqtt | file, ...}}; a key that is a "
        "type name may leave out type:. With none, records go to the file output.",
        "type": "object",
        "propertyNames": {"pattern": NAME_PATTERN, "maxLength": 200},
        "properties": {
            name: {
                "type": ["object", "null"],  # an empty entry (`influxdb:`) is no output
                "allOf": [
                    {"if": {"type": "object", "required": ["type"]}, "then": output},
                    {
                        "if": {"type": "object", "not": {"required": ["type"]}},
                        "then": {"$ref": _REF.format(model=f"output-{name}")},
                    },
                ],
            }
            for name in types
        },
        "additionalProperties": {"type": ["object", "null"], "allOf": [{"if": {"type": "object"}, "then": output}]},
    }


# ---- instruments ---------------------------------------------------------------------------------------------


def _when(key: str, value: str, target: str) -> Schema:
    return {
        "if": {"required": [key], "properties": {key: {"const": value}}},
        "then": {"$ref": _REF.format(model=target)},
    }


def _instrument_defs(defs: dict[str, Schema]) -> list[str]:
    """Per driver, its complete model (``driver-X``) and the one with every key optional (``driver-X-partial``)."""
    names = drivers.driver_names()
    channels = defs.pop(_def_name(ChannelsConfig))
    for name in names:
        model_def = defs.pop(_def_name(drivers.config_model(name)))
        properties = model_def["properties"]
        properties["driver"] = {"const": name, "description": f"the driver ({', '.join(names)})"}
        with_points = copy.deepcopy(channels)
        with_points["properties"]["points"]["items"] = copy.deepcopy(properties["points"]["items"])
        properties["channels"] = with_points
        # With channels:, the instrument's own points may be left out (the channels give them all).
        required = [key for key in model_def.get("required", []) if key != "points"]
        complete = {**model_def, "required": required}
        if "points" in model_def.get("required", []):
            complete["anyOf"] = [{"required": ["points"]}, {"required": ["channels"]}]
        defs[f"driver-{name}"] = complete
        partial = {key: value for key, value in model_def.items() if key != "required"}
        defs[f"driver-{name}-partial"] = partial
    return names


def _shipped_profile_drivers() -> dict[str, list[str]]:
    """The shipped profiles' names by their ``driver:``."""
    by_driver: dict[str, list[str]] = {}
    for path in sorted(shipped_profiles_folder().glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("driver"), str) and isinstance(data.get("profile"), str):
            by_driver.setdefault(data["driver"], []).append(data["profile"])
    return by_driver


def _partial_instrument(names: list[str], *, in_rig: bool) -> Schema:
    """An instrument whose profile gives the rest: its driver's keys if it names the driver, else any driver's.

    In a rig file, a shipped profile's name gives its driver, so that the editor completes and checks that
    driver's keys (a gateway's own profile folder could redefine the name: the loader has the last word).
    """

    def partial(name: str) -> Schema:
        return {"$ref": _REF.format(model=f"driver-{name}-partial")}

    no_driver: Schema = {"not": {"required": ["driver"]}}
    terms: list[Schema] = [_when("driver", name, f"driver-{name}-partial") for name in names]
    known: list[str] = []
    if in_rig:
        for driver, profiles in sorted(_shipped_profile_drivers().items()):
            if driver in names:
                condition = {**no_driver, "required": ["profile"], "properties": {"profile": {"enum": profiles}}}
                terms.append({"if": condition, "then": partial(driver)})
                known += profiles
    fallback = {**no_driver, "properties": {"profile": {"not": {"enum": known}}}} if known else no_driver
    terms.append({"if": fallback, "then": {"anyOf": [partial(name) for name in names]}})
    return {"type": "object", "allOf": terms}


def _instrument(defs: dict[str, Schema]) -> Schema:
    names = _instrument_defs(defs)
    defs["InstrumentFromProfile"] = _partial_instrument(names, in_rig=True)
    return {
        "description": "An instrument: the keys of its driver's model; with a profile:, the profile gives "
        "every key not written here.",
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "driver": {"enum": names}, "profile": {"type": "string"}},
        "if": {"required": ["profile"]},
        "then": {"$ref": _REF.format(model="InstrumentFromProfile")},
        "else": {"required": ["driver"], "allOf": [_when("driver", name, f"driver-{name}") for name in names]},
    }


def _profile(defs: dict[str, Schema]) -> Schema:
    names = _instrument_defs(defs)
    for name in names:  # a profile's own name is profile:, each instrument names itself
        partial = defs[f"driver-{name}-partial"]
        partial["properties"] = {key: value for key, value in partial["properties"].items() if key != "name"}
        partial["properties"]["profile"] = {"type": "string", "pattern": NAME_PATTERN}
    defs["InstrumentFromProfile"] = _partial_instrument(names, in_rig=False)
    return {
        "type": "object",
        "required": ["profile"],
        "properties": {"profile": {"type": "string", "pattern": NAME_PATTERN}, "driver": {"enum": names}},
        "allOf": [{"$ref": _REF.format(model="InstrumentFromProfile")}],
    }


# ---- clean-up ------------------------------------------------------------------------------------------------


def _prune(document: Schema) -> Schema:
    """Only the definitions the document refers to, sorted (one kind's file carries none of another's)."""
    defs: dict[str, Schema] = document.pop("$defs")
    used: set[str] = set()
    pending = [document]
    while pending:
        for name in _refs(pending.pop()):
            if name not in used:
                used.add(name)
                pending.append(defs[name])
    document["$defs"] = {name: defs[name] for name in sorted(used)}
    return document


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[1]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            found.extend(_refs(value))
        return found
    if isinstance(node, list):
        return [name for item in node for name in _refs(item)]
    return []


_STRAY = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _tidy(node: Any) -> Any:
    """Draft-07 form: ``$ref`` alone in its object (draft 7 ignores its siblings), no pydantic leftovers."""
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _tidy(value) for key, value in node.items()}
    # A constraint pydantic could not place on an optional number or size (it leaves ``ge`` as it is): it
    # belongs to the numeric alternatives only, as text such as "4KiB" is not a number.
    stray = {key: node.pop(key) for key in list(node) if key in _STRAY}
    if stray and "anyOf" in node:
        for alternative in node["anyOf"]:
            if alternative.get("type") in ("integer", "number"):
                alternative.update({_STRAY[key]: value for key, value in stray.items()})
    node.pop("discriminator", None)  # OpenAPI's, not JSON Schema's; the if/then above does the job
    if "$ref" in node and len(node) > 1:
        reference = node.pop("$ref")
        node["allOf"] = [{"$ref": reference}, *node.get("allOf", [])]
    return node
