"""Load the gateway file, its profiles and its rig files, and report every problem at its YAML node.

The loader reads each file with :mod:`edge_daq.config.yaml_loader` (data that remembers its positions),
merges profiles into instruments, validates with the pydantic models, maps each validation error back to
the ``path:line:column`` of the offending key or value, and finally runs the checks that only the whole
gateway can make (duplicate rigs, shared serial ports, and each driver's own, such as overlapping register
reads, registered with the driver in :mod:`edge_daq.drivers`). Nothing stops at the
first problem: :class:`~edge_daq.errors.ConfigError` carries all of them, sorted by file and line.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import gc
import hashlib
import json
import os
import re
import stat
import traceback
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

import edge_daq
from edge_daq import drivers
from edge_daq.config.models import AnyInstrument, GatewayConfig, PathList, RigConfig
from edge_daq.config.types import NAME_PATTERN
from edge_daq.config.values import NAME_MAX, check_path_text
from edge_daq.config.yaml_errors import missing_space_after_colon
from edge_daq.config.yaml_loader import MAX_FILE_BYTES, LocatedDict, LocatedList, Mark, YamlDocument, read_yaml
from edge_daq.drivers.base import InstrumentConfig, PlacedInstrument
from edge_daq.errors import ConfigError, ConfigIssue
from edge_daq.processing.checks import check_computed, computed_kinds, inside_scalar
from edge_daq.reliability.config import ChannelsConfig, DutConfig
from edge_daq.reliability.expand import FIELD_TAG, dut_issues, expand_channels, read_duts_csv
from edge_daq.sinks import registry as outputs_registry
from edge_daq.sinks.base import OutputConfig
from edge_daq.writes.checks import check_action_targets

SECRET_KEYS = frozenset({"token", "password"})
# Keys whose values are never quoted in a message: a URL may carry credentials, and a token or password
# pasted into token_file or password_file by mistake is a secret too.
UNQUOTED_KEYS = SECRET_KEYS | {"url", "urls", "token_file", "password_file"}
SERIAL_SETTINGS = ("baudrate", "parity", "stopbits", "bytesize")
DEFAULT_RIGS_FOLDER = "rigs.d"

_Model = TypeVar("_Model", bound=BaseModel)
_NAME_MESSAGE = "expected a name of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
_INSTRUMENT: TypeAdapter[InstrumentConfig] = TypeAdapter(AnyInstrument)
_PATHS: TypeAdapter[list[Path]] = TypeAdapter(PathList)
# Errors that are about a key being there, so they point at the key rather than its value.
_KEY_ERRORS = frozenset({"extra_forbidden", "not_available"})
_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
}


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A gateway configuration that passed every check."""

    gateway: GatewayConfig
    rigs: list[RigConfig]  # instruments merged with their profiles and validated by their driver's model
    path: Path
    files: list[Path]  # every file read, in reading order
    hash: str  # sha256 over the parsed content of every file: unchanged by comments and layout


@dataclass(frozen=True, slots=True)
class CheckResult:
    issues: list[ConfigIssue]
    files: list[Path]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    values: LocatedDict  # every key of the profile file except `profile`
    mark: Mark  # the profile's name in its file


def shipped_profiles_folder() -> Path:
    """The profiles shipped with edge-daq: inside the wheel, or ``config/profiles`` of an editable install."""
    package = Path(edge_daq.__file__).parent
    installed = package / "_shipped_config" / "profiles"
    return installed if installed.is_dir() else package.parent / "config" / "profiles"


def load_config(gateway_path: Path) -> LoadedConfig:
    """Load a gateway file and everything it refers to; raise ConfigError with every issue found.

    Nothing else escapes: an unexpected exception is a bug, reported as an ``internal error`` issue, so that
    neither ``edge-daq run`` nor a reload ever dies of a configuration file.
    """
    with one_collection():
        session = _Session()
        loaded = document = None
        try:
            document = session.read(gateway_path)
            if session.kind(document, expected="gateway") == "gateway":
                loaded = session.load_gateway(document)
            issues = session.sorted_issues()
        except Exception as error:
            issues, loaded = [*session.sorted_issues(), internal_error(gateway_path, error)], None
        del session, document  # the located data goes before the collection
    if issues or loaded is None:
        raise ConfigError(issues)
    return loaded


def internal_error(path: Path, error: BaseException) -> ConfigIssue:
    """An unexpected exception as an issue at ``path:1:1``: its type and the place in edge-daq that raised it.

    Never its message, which may quote a value of the file (a secret).
    """
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if "edge_daq" in Path(frame.filename).parts]
    where = ""
    if frames:
        parts = Path(frames[-1].filename).parts
        where = f" at {'/'.join(parts[len(parts) - 1 - parts[::-1].index('edge_daq') :])}:{frames[-1].lineno}"
    return ConfigIssue(
        str(path), 1, 1, f"internal error: {type(error).__name__}{where} (a bug in edge-daq: please report it)"
    )


def check_files(paths: Sequence[Path]) -> list[ConfigIssue]:
    """Every issue in these gateway, rig or profile files, as ``edge-daq check`` reports them."""
    return check_config(paths).issues


def check_config(paths: Sequence[Path]) -> CheckResult:
    """Check gateway files (with their rigs), rig files (with the shipped profiles) and profile files.

    A rig file that one of the gateways already includes is checked once, as part of that gateway.
    """
    with one_collection(collect=False):  # only the result outlives the session: reference counts free the rest
        session = _Session()
        lone_rigs: list[YamlDocument] = []
        for path in paths:
            try:
                document = session.read(path)
                kind = session.kind(document, expected=None)
                if kind == "gateway":
                    session.load_gateway(document)
                elif kind == "rig" and document not in lone_rigs:
                    lone_rigs.append(document)
                elif kind == "profile":
                    session.check_profile_document(document)
            except Exception as error:  # a bug: reported like a problem of the file, and the other files go on
                session.issues.append(internal_error(path, error))
        lone_rigs = [document for document in lone_rigs if document not in session.gateway_rigs]
        if lone_rigs:
            try:
                profiles = session.load_profiles([(shipped_profiles_folder(), None)])
                session.load_rigs(lone_rigs, profiles)
            except Exception as error:
                session.issues.append(internal_error(lone_rigs[0].path, error))
        return CheckResult(session.sorted_issues(), [document.path for document in session.documents.values()])


@contextlib.contextmanager
def one_collection(*, collect: bool = True) -> Iterator[None]:
    """No automatic cyclic collections while loading; then, unless told otherwise, one full collection.

    A load builds several hundred thousand objects that all live until its end, so every automatic full
    collection walked all of them to find nothing; and after the load, the young generations would walk the
    surviving config models twice more before they settle in the old one. bench/startup.py: 0.1-0.2 s of
    `edge-daq check` and of `edge-daq run` to READY on 1000 instruments.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            if collect:
                gc.collect()


@dataclass
class _Session:
    """One loading pass: every file read once, every issue collected."""

    documents: dict[Path, YamlDocument] = field(default_factory=dict)
    read_issues: list[ConfigIssue] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    gateway_rigs: list[YamlDocument] = field(default_factory=list)

    def read(self, path: Path) -> YamlDocument:
        key = path.resolve()
        if key not in self.documents:
            self.documents[key] = document = read_yaml(path)
            self.read_issues.extend(document.issues)
        return self.documents[key]

    def sorted_issues(self) -> list[ConfigIssue]:
        # A value the reader already complained about (a missing ${VARIABLE}) would fail validation too.
        read_positions = {(issue.path, issue.line, issue.column) for issue in self.read_issues}
        follow_ups = [issue for issue in self.issues if (issue.path, issue.line, issue.column) not in read_positions]
        unique = dict.fromkeys([*self.read_issues, *follow_ups])
        read = set(self.read_issues)
        # Root causes first: a file that cannot be read (YAML syntax) explains what is missing elsewhere, and
        # a rig file's problems the rows of its DUT CSV; then by file and line.
        return sorted(
            unique,
            key=lambda issue: (issue not in read, issue.path.endswith(".csv"), issue.path, issue.line, issue.column),
        )

    def kind(self, document: YamlDocument, expected: str | None) -> str | None:
        """``gateway``, ``rig`` or ``profile`` by the file's identifying key; reports a file that has none."""
        if document.data is None:
            return None
        if isinstance(document.data, LocatedDict):
            for kind in ("gateway", "rig", "profile"):
                if kind in document.data and expected in (None, kind):
                    return kind
        wanted = f"a {expected}: key" if expected else "a gateway:, rig: or profile: key"
        self.issues.append(document.start.issue(f"not an edge-daq {expected or 'config'} file: expected {wanted}"))
        return None

    def load_gateway(self, document: YamlDocument) -> LoadedConfig | None:
        data: LocatedDict = document.data
        gateway = self.validate(GatewayConfig, data)
        here = document.path.parent
        profile_folders = [(shipped_profiles_folder(), None), *self._listed_paths(data, "profiles", here)]
        profiles = self.load_profiles(profile_folders)
        rig_documents = self._rig_documents(data, here)
        self.gateway_rigs.extend(rig_documents)
        rigs = self.load_rigs(rig_documents, profiles)
        if gateway is None or rigs is None:
            return None
        if any(rig.has_reliability for rig in rigs) and (issue := check_control_socket(gateway, data)) is not None:
            self.issues.append(issue)
            return None
        documents = list(self.documents.values())
        return LoadedConfig(
            gateway=gateway,
            rigs=rigs,
            path=document.path,
            files=[doc.path for doc in documents],
            hash=_content_hash(doc.data for doc in documents),
        )

    def validate(self, model: type[_Model], data: LocatedDict) -> _Model | None:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            self.issues.extend(validation_issues(error.errors(), data, data.mark, root=model))
            return None

    def load_profiles(self, folders: Sequence[tuple[Path, Mark | None]]) -> dict[str, Profile]:
        """Profiles by name; a later folder overrides an earlier one (the shipped folder comes first)."""
        profiles: dict[str, Profile] = {}
        for folder, mark in folders:
            in_folder: dict[str, Profile] = {}
            for path in self._yaml_files(folder, mark, what="profile folder"):
                profile = self._parse_profile(self.read(path))
                if profile is None:
                    continue
                if (earlier := in_folder.get(profile.name)) is not None:
                    self.issues.append(
                        profile.mark.issue(f"profile {profile.name!r} is also defined at {earlier.mark}")
                    )
                in_folder[profile.name] = profile
            profiles.update(in_folder)
        return profiles

    def check_profile_document(self, document: YamlDocument) -> None:
        """Validate a profile file on its own; the keys each instrument must add (host, ...) may be missing."""
        profile = self._parse_profile(document)
        if profile is None:
            return
        sample = LocatedDict(profile.values.mark)
        sample["name"] = profile.name
        for key in profile.values:
            sample.take(profile.values, key)
        if "channels" in sample:
            self.issues.extend(expand_channels(sample, [], [], _channel_issues))
        try:
            _INSTRUMENT.validate_python(sample)
        except ValidationError as error:
            errors = [e for e in error.errors() if e["type"] not in ("missing", "union_tag_not_found")]
            self.issues.extend(validation_issues(errors, sample, sample.mark, root=AnyInstrument))

    def load_rigs(self, documents: Sequence[YamlDocument], profiles: dict[str, Profile]) -> list[RigConfig] | None:
        """Validate rig files together, with the checks across them; None if any issue was found."""
        rigs: list[RigConfig] = []
        placed: list[PlacedInstrument] = []
        rig_names: list[tuple[str, Mark]] = []
        all_valid = True
        for document in documents:
            data: LocatedDict = document.data
            if isinstance(data.get("rig"), str):
                rig_names.append((data["rig"], data.value_mark("rig")))
                if len(data["rig"].encode("utf-8", "surrogateescape")) > NAME_MAX:  # the rig's state folder
                    self.issues.append(data.value_mark("rig").issue(f"a rig name must be at most {NAME_MAX} bytes"))
                    all_valid = False
            rig, rig_placed = self._load_rig(data, profiles)
            placed.extend(rig_placed)
            if rig is None:
                all_valid = False
            else:
                rigs.append(rig)
        cross_issues = [*check_duplicate_rigs(rig_names), *check_serial_ports(placed), *plugin_checks(placed)]
        cross_issues += check_computed(placed)  # names read by computed points (edge_daq.processing)
        self.issues.extend(cross_issues)
        return rigs if all_valid and not cross_issues else None

    def _load_rig(
        self, data: LocatedDict, profiles: dict[str, Profile]
    ) -> tuple[RigConfig | None, list[PlacedInstrument]]:
        raw_instruments = data.get("instruments")
        if not isinstance(raw_instruments, LocatedList):
            return self.validate(RigConfig, data), []  # pydantic reports a missing or malformed list
        sources = [self._apply_profile(item, profiles) for item in raw_instruments]
        self.issues.extend(check_duplicate_instruments(sources))
        # Instruments that failed to load are reported once, at their cause: what refers to them (DUTs,
        # stress terms, failure rules) is not reported again as missing. Without its profile, whether an
        # instrument has channels is unknown too.
        unresolved = {_name(item) for item, source in zip(raw_instruments, sources, strict=True) if source is None}
        failed = set(unresolved)
        duts = self._expand_reliability(data, sources, unresolved)
        configs: list[InstrumentConfig] = []
        placed: list[PlacedInstrument] = []
        for item, source, mark in zip(raw_instruments, sources, raw_instruments.item_marks, strict=True):
            if source is None:
                continue
            try:
                config = _INSTRUMENT.validate_python(source)
            except ValidationError as error:
                self.issues.extend(validation_issues(error.errors(), source, mark, root=AnyInstrument))
                failed.add(_name(item))
                continue
            assert isinstance(source, LocatedDict)  # a valid instrument was a mapping
            configs.append(config)
            placed.append(PlacedInstrument(config, source))
        # The instruments are validated one by one above, so that the valid ones still take part in the
        # cross checks; the rig model accepts the validated instances as they are.
        rig_input = LocatedDict(data.mark)
        for key in data:
            rig_input.take(data, key)
        rig_input["instruments"] = configs
        if duts is not None:
            rig_input["duts"] = duts
        rig = self.validate(RigConfig, rig_input)
        if rig is not None:
            self.issues.extend(check_point_references(rig, data, failed))
            self.issues.extend(check_action_targets(rig, data, failed))
        return (rig if len(configs) == len(raw_instruments) and duts is not None else None), placed

    def _expand_reliability(
        self, data: LocatedDict, sources: list[object | None], unresolved: set[str | None]
    ) -> list[DutConfig] | None:
        """Read the DUTs (inline, then ``duts_csv``) and expand ``channels:`` in place; None on any issue."""
        raw_duts = LocatedList(data.value_mark("duts"))
        inline = data.get("duts")
        if isinstance(inline, LocatedList):
            raw_duts.extend(inline)
            raw_duts.item_marks.extend(inline.item_marks)
        csv_name = data.get("duts_csv")
        issues: list[ConfigIssue] = []
        if isinstance(csv_name, str):
            rows, csv_issues = _read_duts_csv(Path(data.mark.path).parent, csv_name, data.value_mark("duts_csv"))
            issues.extend(csv_issues)
            raw_duts.extend(rows)
            raw_duts.item_marks.extend(rows.item_marks)
        placed_duts: list[tuple[DutConfig, Mark]] = []
        for index, item in enumerate(raw_duts):
            mark = raw_duts.item_mark(index)
            try:
                placed_duts.append((DutConfig.model_validate(item), mark))
            except ValidationError as error:
                issues.extend(validation_issues(error.errors(), item, mark, root=DutConfig))
        with_channels = [
            s["name"]
            for s in sources
            if isinstance(s, LocatedDict) and "channels" in s and isinstance(s.get("name"), str)
        ]
        if placed_duts:
            issues.extend(dut_issues(placed_duts, with_channels, unresolved))
        duts = [dut for dut, _ in placed_duts]
        for source in sources:
            if isinstance(source, LocatedDict) and "channels" in source:
                issues.extend(expand_channels(source, duts, with_channels, _channel_issues))
        self.issues.extend(issues)
        return None if issues else duts

    def _apply_profile(self, item: object, profiles: dict[str, Profile]) -> object | None:
        """A copy of the instrument with every key of its profile that it does not give itself; None if unknown.

        A copy, so that expanding it leaves the document (and its hash) as read.
        """
        if not isinstance(item, LocatedDict) or not isinstance(item.get("profile"), str):
            return _copy(item)
        name = item["profile"]
        profile = profiles.get(name)
        if profile is None:
            message = (
                f"unknown profile {name!r}{_suggestion(name, profiles)}; known profiles: {', '.join(sorted(profiles))}"
            )
            self.issues.append(item.value_mark("profile").issue(message))
            return None
        merged = LocatedDict(item.mark)
        for source in (profile.values, item):
            for key in source:
                merged.take(source, key)
        return merged

    def _parse_profile(self, document: YamlDocument) -> Profile | None:
        data = document.data
        if data is None:
            return None
        if not isinstance(data, LocatedDict) or "profile" not in data:
            self.issues.append(document.start.issue("not a profile file: expected a profile: key"))
            return None
        name = data["profile"]
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            self.issues.append(data.value_mark("profile").issue(_NAME_MESSAGE))
            return None
        if "name" in data:
            self.issues.append(data.key_mark("name").issue("a profile cannot set name: each instrument names itself"))
        values = LocatedDict(data.mark)
        for key in data:
            if key not in ("profile", "name"):
                values.take(data, key)
        return Profile(name, values, data.value_mark("profile"))

    def _listed_paths(self, data: LocatedDict, key: str, here: Path) -> list[tuple[Path, Mark | None]]:
        """The paths under ``key``, relative to ``here``, each with its position in the file."""
        raw = data.get(key)
        if raw is None:
            return []
        try:
            paths = _PATHS.validate_python(raw)
        except ValidationError:
            return []  # GatewayConfig reports it
        marks = raw.item_marks if isinstance(raw, LocatedList) else [data.value_mark(key)]
        return [(here / path, mark) for path, mark in zip(paths, marks, strict=True)]

    def _rig_documents(self, data: LocatedDict, here: Path) -> list[YamlDocument]:
        if data.get("rigs") is None:
            default = here / DEFAULT_RIGS_FOLDER
            entries: list[tuple[Path, Mark | None]] = [(default, None)] if default.is_dir() else []
        else:
            entries = self._listed_paths(data, "rigs", here)
        documents: list[YamlDocument] = []
        for path, mark in entries:
            try:
                exists, is_folder = path.exists(), path.is_dir()
            except OSError as error:  # e.g. a path that is too long once joined to this file's folder
                if mark is not None:
                    self.issues.append(mark.issue(f"cannot read {path}: {error.strerror or error}"))
                continue
            if not exists:
                if mark is not None:
                    self.issues.append(mark.issue(f"no such file or folder: {path}"))
                continue
            for rig_path in self._yaml_files(path, mark, what="rig folder") if is_folder else [path]:
                document = self.read(rig_path)
                if self.kind(document, expected="rig") == "rig" and document not in documents:
                    documents.append(document)
        return documents

    def _yaml_files(self, folder: Path, mark: Mark | None, what: str) -> list[Path]:
        """The ``*.yaml``/``*.yml`` files of a folder, sorted, without hidden files (editor leftovers)."""
        try:
            entries = list(folder.iterdir())
        except FileNotFoundError:
            if mark is not None:  # the shipped profile folder may legitimately be absent
                self.issues.append(mark.issue(f"no such {what}: {folder}"))
            return []
        except OSError as error:
            if mark is not None:
                self.issues.append(mark.issue(f"cannot read {what} {folder}: {error.strerror or error}"))
            return []
        return sorted(p for p in entries if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))


def _read_duts_csv(folder: Path, name: str, mark: Mark) -> tuple[LocatedList, list[ConfigIssue]]:
    """The DUT rows of ``duts_csv``; a path the OS refuses, a file that is not a regular one of at most
    MAX_FILE_BYTES (``/dev/zero`` never ends) or one the csv module refuses is an issue."""
    path = folder / name
    try:
        check_path_text(name)
    except ValueError as error:  # the path's own message: RigConfig reports the same, once
        return LocatedList(mark), [mark.issue(str(error))]
    with contextlib.suppress(OSError):  # a missing file: read_duts_csv says so
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return LocatedList(mark), [mark.issue(f"DUT file {path} is not a regular file")]
        if info.st_size > MAX_FILE_BYTES:
            return LocatedList(mark), [mark.issue(f"DUT file {path} is larger than {MAX_FILE_BYTES >> 20} MiB")]
    try:
        return read_duts_csv(path, mark)
    except UnicodeDecodeError:
        return LocatedList(mark), [mark.issue(f"DUT file {path} is not a text file (it is not valid UTF-8)")]
    except (OSError, ValueError, csv.Error) as error:
        return LocatedList(mark), [mark.issue(f"cannot read DUT file {path}: {error}")]


def _channel_issues(error: ValidationError, raw: object, mark: Mark) -> list[ConfigIssue]:
    return validation_issues(error.errors(), raw, mark, root=ChannelsConfig)


def _name(item: object) -> str | None:
    """An instrument's name as written, whatever else is wrong with it."""
    name = item.get("name") if isinstance(item, LocatedDict) else None
    return name if isinstance(name, str) else None


def _copy(item: object | None) -> object | None:
    """A shallow copy of an instrument mapping, so expanding it leaves the document (and its hash) as read."""
    if not isinstance(item, LocatedDict):
        return item
    copy = LocatedDict(item.mark)
    for key in item:
        copy.take(item, key)
    return copy


def _record_fields(config: InstrumentConfig) -> set[str]:
    """Fields of an instrument's main record: its points, less those split into per-channel records."""
    names: set[str] = set()
    for point in getattr(config, "points", []):
        if FIELD_TAG in (getattr(point, "tags", None) or {}):
            continue
        name, fields = getattr(point, "name", None), getattr(point, "fields", None)
        names.update([name] if isinstance(name, str) else fields or [])
    return names | {name for name, kind in computed_kinds(config).items() if kind == "record"}


def _channel_fields(config: InstrumentConfig) -> set[str]:
    computed = {name for name, kind in computed_kinds(config).items() if kind == "channel"}
    return computed | {tags[FIELD_TAG] for tags in config.field_tags().values() if FIELD_TAG in tags}


def check_point_references(
    rig: RigConfig, data: LocatedDict, failed: set[str | None] | None = None
) -> list[ConfigIssue]:
    """``instrument.point`` in stress conditions must name a real point; failure rules a per-channel field.

    ``failed``: instruments of the rig that failed to load, already reported: references to them are not.
    """
    failed = failed or set()
    stress, failures = data.get("stress"), data.get("failures")
    if stress is None and failures is None:
        return []  # bench/startup.py: the field sets of every instrument are only needed for references
    fields = {instrument.name: _record_fields(instrument) for instrument in rig.instruments}
    channel_fields = set().union(*(_channel_fields(instrument) for instrument in rig.instruments))
    issues: list[ConfigIssue] = []

    def check(reference: str, mark: Mark) -> None:
        instrument, _, point = reference.rpartition(".")
        if instrument in failed:
            return
        if instrument not in fields:
            issues.append(mark.issue(f"no instrument {instrument!r} in this rig{_suggestion(instrument, fields)}"))
        elif point not in fields[instrument]:
            suggestion = _suggestion(point, fields[instrument])
            issues.append(mark.issue(f"instrument {instrument!r} has no point {point!r}{suggestion}"))

    def conditions(parent: object, key: str) -> list[tuple[object, LocatedDict | None]]:
        items = parent.get(key) if isinstance(parent, LocatedDict) else None
        return list(items) if isinstance(items, LocatedList) else []

    for item in [*conditions(stress, "all"), *conditions(failures, "when")]:
        if isinstance(item, LocatedDict):
            for key in ("point", "of"):
                if isinstance(item.get(key), str):
                    check(item[key], item.value_mark(key))
    cycling = stress.get("cycling") if isinstance(stress, LocatedDict) else None
    if isinstance(cycling, LocatedDict) and isinstance(cycling.get("point"), str):
        check(cycling["point"], cycling.value_mark("point"))
    issues.extend(_check_cycle_windows(failures, stress, check))
    for item in conditions(failures, "rules"):
        if failed:
            break  # the per-DUT fields of an instrument that failed to load are unknown
        if isinstance(item, LocatedDict) and isinstance(item.get("field"), str) and item["field"] not in channel_fields:
            known = ", ".join(sorted(channel_fields)) or "none: declare channels: on an instrument"
            issues.append(item.value_mark("field").issue(f"no per-DUT field {item['field']!r} (fields: {known})"))
    return issues


def _check_cycle_windows(failures: object, stress: object, check: Callable[[str, Mark], None]) -> list[ConfigIssue]:
    """A confirmation window in cycles needs its cycles: ``cycles_from`` (a real point) or ``stress.cycling``."""
    if not isinstance(failures, LocatedDict):
        return []
    windows = [failures.get("confirm")]
    rules = failures.get("rules")
    windows += [
        rule.get("confirm")
        for rule in (rules if isinstance(rules, LocatedList) else [])
        if isinstance(rule, LocatedDict)
    ]
    counted = isinstance(stress, LocatedDict) and stress.get("cycling") is not None
    issues = []
    for window in windows:
        if not isinstance(window, LocatedDict) or not ({"within_cycles", "within_fraction"} & set(window)):
            continue
        source = window.get("cycles_from")
        if isinstance(source, str):
            check(source, window.value_mark("cycles_from"))
        elif source is None and not counted:
            issues.append(window.mark.issue(
                "a window in cycles needs cycles: cycles_from: <instrument.point> (a counter) or stress.cycling"
            ))  # fmt: skip
    return issues


def _content_hash(contents: Iterable[object]) -> str:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(json.dumps(content, sort_keys=True, default=str, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Validation errors as positioned, human messages


def validation_issues(errors: Iterable[ErrorDetails], data: object, mark: Mark, root: Any) -> list[ConfigIssue]:
    """One issue per pydantic error; ``data`` is the located input, ``mark`` its position, ``root`` its type."""
    issues = []
    for error in errors:
        loc = tuple(error["loc"])
        at_key = error["type"] in _KEY_ERRORS
        if loc and loc[-1] == "[key]":
            loc, at_key = loc[:-1], True
        if error["type"] == "union_tag_invalid":
            loc = (*loc, _tag_key(error))
        place = _locate(data, mark, loc, at_key=at_key)
        # An error that knows where in its value it lies (a computed point's syntax error): that column.
        offset = getattr(error.get("ctx", {}).get("error"), "offset", None)
        if isinstance(offset, int) and not at_key:
            place = inside_scalar(place, offset)
        issues.append(place.issue(_message(error, loc, root)))
    return issues


def _locate(node: object, mark: Mark, loc: tuple[int | str, ...], *, at_key: bool) -> Mark:
    """The key or value at ``loc``; for a missing key, the mapping that lacks it."""
    for index, part in enumerate(loc):
        if isinstance(node, LocatedDict):
            if part in node:
                if at_key and index == len(loc) - 1:
                    return node.key_mark(part)
                mark, node = node.value_mark(part), node[part]
            elif part not in (node.get("driver"), node.get("model")):  # pydantic puts the union tag in the loc
                return node.mark
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            mark, node = node.item_mark(part), node[part]
        else:
            break  # the model looked inside a scalar (a converted value): the scalar is the place
    return mark


def _tag_key(error: ErrorDetails) -> str:
    """The key of a tagged union's tag: ``driver`` for instruments, ``model`` for acceleration models."""
    return str(error.get("ctx", {}).get("discriminator", "driver")).strip("'")


def _message(error: ErrorDetails, loc: tuple[int | str, ...], root: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    value = error.get("input")
    secret = any(isinstance(part, str) and part.lower() in UNQUOTED_KEYS for part in loc)
    if kind == "missing":
        return f"missing key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return f"unknown key {_shown(loc[-1])}{_suggestion(str(loc[-1]), _known_keys(root, loc[:-1]))}"
    if kind == "union_tag_invalid":
        tag = str(ctx["tag"])
        if _tag_key(error) != "driver":  # another tagged union (an acceleration model's `model:`)
            known = re.findall(r"'([^']*)'", str(ctx["expected_tags"]))
            return f"unknown {_tag_key(error)} {tag!r}{_suggestion(tag, known)}; known: {', '.join(known)}"
        known = drivers.driver_names()
        return f"unknown driver {tag!r}{_suggestion(tag, known)}; known drivers: {', '.join(known)}"
    if kind == "union_tag_not_found":
        return "missing key 'driver'" if isinstance(value, dict) else _TYPE_MESSAGES["dict_type"]
    if kind in ("value_error", "assertion_error", "not_available"):
        # Our own validators' messages, which already say what they got (except for secrets).
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return message.replace(value, "***") if secret and isinstance(value, str) and value else message
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        message = _NAME_MESSAGE
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx["expected"]))
        message = f"expected {ctx['expected']}{_suggestion(str(value), choices)}"
    elif kind == "too_short":
        count = ctx["min_length"]
        message = f"expected at least {count} item{'s' if count != 1 else ''}"
    elif kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        message = "expected a string (put the value in quotes)"
    elif kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
        if message == _TYPE_MESSAGES["dict_type"] and isinstance(value, str) and missing_space_after_colon(value):
            message += " (a space is missing after ':'; write 'key: value')"
    else:
        message = re.sub(r"^(Input|String|List|Value|Dictionary) should", "must", error["msg"])
    if secret or not isinstance(value, str | int | float | bool | None):
        return message
    return f"{message}, got {'an empty value' if value is None else _shown(value)}"


def _shown(value: object) -> str:
    """A value or key as quoted in a message: at most about 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else repr(f"{str(value)[:36]}...")


def _suggestion(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _alternatives(annotation: Any) -> list[Any]:
    """The types an annotation allows, through Annotated, Optional and unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [alternative for arg in get_args(annotation) for alternative in _alternatives(arg)]
    return [annotation]


def _known_keys(root: Any, loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` accepts, for "did you mean" suggestions."""
    annotation: Any = root
    for part in loc:
        annotation = _child_annotation(annotation, part)
    models = [a for a in _alternatives(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    if OutputConfig in models:  # an output entry: its type is in the data, not in the loc, so any output's keys
        models += [outputs_registry.config_model(name) for name in outputs_registry.type_names()]
    return [key for model in models for key in model.model_fields]


def _child_annotation(annotation: Any, part: int | str) -> Any:
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, RootModel):
            return _child_annotation(candidate.model_fields["root"].annotation, part)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            if part in candidate.model_fields:
                return candidate.model_fields[str(part)].annotation
            if issubclass(candidate, InstrumentConfig) and part in drivers.driver_names():
                return drivers.config_model(str(part))
        elif get_origin(candidate) is list and isinstance(part, int):
            return get_args(candidate)[0]
        elif get_origin(candidate) is dict and isinstance(part, str):
            return get_args(candidate)[1]
    return None


# ---------------------------------------------------------------------------------------------------
# Checks that need more than one instrument or one file


UNIX_SOCKET_PATH_MAX = 107
"""Bytes in the path of a Unix socket (sun_path holds 108 with the NUL)."""


def check_control_socket(gateway: GatewayConfig, data: LocatedDict) -> ConfigIssue | None:
    """The reliability control socket (``control.sock`` in the state folder) must fit a Unix socket's path.

    Relative folders are taken from the current folder, as the daemon does.
    """
    socket_path = gateway.control_socket_path.absolute()
    size = len(os.fsencode(socket_path))
    if size <= UNIX_SOCKET_PATH_MAX:
        return None
    key = "state_dir" if "state_dir" in data else None
    buffer = data.get("buffer")
    if key is not None:
        mark = data.value_mark(key)
    elif isinstance(buffer, LocatedDict) and "spool_dir" in buffer:
        mark = buffer.value_mark("spool_dir")
    else:
        mark = data.mark
    return mark.issue(
        f"the reliability control socket {socket_path} would have {size} bytes, over the {UNIX_SOCKET_PATH_MAX} "
        "a Unix socket allows: give a shorter state_dir"
    )


def plugin_checks(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    """Each driver's own checks across the gateway (registered with the driver), given its instruments."""
    by_check: dict[drivers.GatewayCheck, list[PlacedInstrument]] = {}
    hooks: dict[str, drivers.GatewayCheck | None] = {}  # looked up once per driver, not per instrument
    for placed in instruments:
        driver = placed.config.driver
        if driver not in hooks:
            hooks[driver] = drivers.gateway_check(driver)
        if (check := hooks[driver]) is not None:
            by_check.setdefault(check, []).append(placed)
    return [issue for check, placed in by_check.items() for issue in check(placed)]


def check_duplicate_rigs(rig_names: Sequence[tuple[str, Mark]]) -> list[ConfigIssue]:
    """Each place of a rig name used more than once on the gateway, naming the other places."""
    places: dict[str, list[Mark]] = {}
    for name, mark in rig_names:
        places.setdefault(name, []).append(mark)
    return [
        mark.issue(f"rig {name!r} is also defined at {', '.join(str(other) for other in marks if other != mark)}")
        for name, marks in places.items()
        if len(marks) > 1
        for mark in marks
    ]


def check_duplicate_instruments(instruments: Sequence[object]) -> list[ConfigIssue]:
    """Instrument names given twice in one rig, reported at the second one."""
    issues = []
    first_lines: dict[str, int] = {}
    for instrument in instruments:
        if not isinstance(instrument, LocatedDict) or not isinstance(name := instrument.get("name"), str):
            continue
        mark = instrument.value_mark("name")
        if name in first_lines:
            issues.append(mark.issue(f"instrument {name!r} is already defined on line {first_lines[name]} of this rig"))
        else:
            first_lines[name] = mark.line
    return issues


def check_serial_ports(instruments: Sequence[PlacedInstrument]) -> list[ConfigIssue]:
    """Instruments on one serial port (a ``port`` that is a device path) must agree on its settings.

    Generic over drivers: any config with a string ``port`` and some of the serial settings takes part.
    """
    issues = []
    first_on_port: dict[str, PlacedInstrument] = {}
    for placed in instruments:
        port = getattr(placed.config, "port", None)
        if not isinstance(port, str):
            continue
        first = first_on_port.setdefault(port, placed)
        for setting in SERIAL_SETTINGS:
            theirs, mine = getattr(first.config, setting, None), getattr(placed.config, setting, None)
            if mine == theirs:
                continue
            where = first.source.value_mark("port")
            mark = placed.source.value_mark(setting if setting in placed.source else "port")
            issues.append(
                mark.issue(
                    f"{setting} {mine} differs from {setting} {theirs} of instrument {first.config.name!r} "
                    f"on the same port {port} ({where}): instruments on one serial port share its settings"
                )
            )
    return issues
