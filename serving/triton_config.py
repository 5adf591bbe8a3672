"""Triton's `config.pbtxt`, both ways: the model configuration Triton itself reads.

Written: `model_config` builds Triton's `ModelConfig` message from what netc
serves (a model's `ModelInfo` and its settings). The ModelConfig RPC answers
with it, and `netc export --repository` writes it as `REPO/<model>/config.pbtxt`
(with `labels.txt` for a classifier with class names), so a repository made by
netc moves to Triton as it is.

Read: where a model folder has no `config.yaml`, `netc serve` reads its
`config.pbtxt` (`read_config`), so a Triton user's repository serves as it is.
Of Triton's fields netc uses:

| Triton | netc (serving.config) |
| --- | --- |
| max_batch_size | max_batch_size (absent: 0, no batching, as in Triton) |
| dynamic_batching (absent: off) | dynamic_batching |
| .preferred_batch_size | preferred_batch_sizes |
| .max_queue_delay_microseconds | max_queue_delay_us; netc's `auto` is the parameter below |
| .default_queue_policy.max_queue_size | max_queue_size (0, Triton's unbounded: netc's 256) |
| instance_group[*].count | instances (the counts added up) |
| version_policy | version_policy (latest keeps one version) |
| input[*].format | input_format |
| output[*].label_filename | labels (the first output's file, one label a line) |
| parameters intra_op_thread_count | intra_op_threads (the key Triton's onnxruntime backend reads) |
| parameters netc.max_queue_delay_us: "auto" | max_queue_delay_us: auto |

name, platform and backend are checked (netc serves ONNX on onnxruntime);
inputs' and outputs' names, types and dims describe the model, which netc
reads from the model itself. A sequence or ensemble model is refused. Any
other field set is named once in the log as ignored. `from_json` reads the
same settings from RepositoryModelLoad's `config` parameter (Triton's
override, a ModelConfig in JSON).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from netc.errors import SourceLoc, UserError
from netc.protos.generated import model_config_pb2 as config_pb
from netc.serving.batching_policy import AUTO_MAX_DELAY_S
from netc.serving.config import DEFAULTS, MAX_DELAY_US, ModelConfig, load_config
from netc.serving.model_info import ModelInfo, TensorSpec
from netc.serving.repository import MODEL_FILE  # also Triton's onnxruntime backend's default

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"
AUTO_DELAY = "netc.max_queue_delay_us"  # parameter: "auto" (Triton has no such delay)
THREADS = "intra_op_thread_count"  # Triton's onnxruntime backend parameter
PRECISION = "precision"  # netc's report of the weights' precision: fp32, fp16, int8
FORMATS = {"NCHW": config_pb.ModelInput.FORMAT_NCHW, "NHWC": config_pb.ModelInput.FORMAT_NHWC}
HEADER = (
    "# Triton's model configuration, written by netc export. netc serve reads it too\n"
    "# where the model has no config.yaml; see serving/triton_config.py.\n"
)
log = logging.getLogger("netc.serving")
_told: set[tuple[str, tuple[str, ...]]] = set()  # (file, ignored fields) already logged


# Writing.


def _datatype(datatype: str) -> config_pb.DataType:
    if datatype == "BYTES":
        return config_pb.TYPE_STRING
    return cast(config_pb.DataType, config_pb.DataType.Value(f"TYPE_{datatype}"))


def _version_policy(policy) -> config_pb.ModelVersionPolicy:
    if policy == "all":
        return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())
    if policy == "latest":
        return config_pb.ModelVersionPolicy(
            latest=config_pb.ModelVersionPolicy.Latest(num_versions=1)
        )
    return config_pb.ModelVersionPolicy(
        specific=config_pb.ModelVersionPolicy.Specific(versions=list(policy))
    )


def _input_format(
    spec: TensorSpec, info: ModelInfo, config: ModelConfig
) -> config_pb.ModelInput.Format:
    """NCHW or NHWC for a picture input (three dims besides the batch), as config.yaml or
    config.pbtxt says, else as the model card's preprocessing does; Triton's image
    clients need it. Anything else: FORMAT_NONE."""
    layout = config.input_format
    if layout is None and info.preprocessing is not None:
        layout = info.preprocessing.layout
    if len(spec.dims) != 3:
        return config_pb.ModelInput.FORMAT_NONE
    return FORMATS.get(layout or "", config_pb.ModelInput.FORMAT_NONE)


def model_config(
    info: ModelInfo, config: ModelConfig, *, kind: config_pb.ModelInstanceGroup.Kind | None = None
) -> config_pb.ModelConfig:
    """Triton's model configuration of a served model. `kind`, where the model runs
    (ModelInstanceGroup.KIND_CPU or KIND_GPU), for a running server; None leaves it to
    Triton (KIND_AUTO), as a written config.pbtxt does."""
    labelled = info.task == "classification" and bool(info.labels)
    proto = config_pb.ModelConfig(
        name=info.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=info.max_batch_size,
        version_policy=_version_policy(config.version_policy),
        input=[
            config_pb.ModelInput(
                name=t.name,
                data_type=_datatype(t.datatype),
                format=_input_format(t, info, config),
                dims=t.dims,
            )
            for t in info.inputs
        ],
        output=[
            config_pb.ModelOutput(
                name=t.name,
                data_type=_datatype(t.datatype),
                dims=t.dims,
                label_filename=LABELS_FILE if labelled and i == 0 else "",
            )
            for i, t in enumerate(info.outputs)
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(count=config.instances)
            if kind is None
            else config_pb.ModelInstanceGroup(
                name=f"{info.name}_0", kind=kind, count=config.instances
            )
        ],
    )
    proto.parameters[PRECISION].string_value = info.precision
    if config.intra_op_threads:
        proto.parameters[THREADS].string_value = str(config.intra_op_threads)
    if info.dynamic_batching:
        batching = proto.dynamic_batching
        batching.preferred_batch_size.extend(info.preferred_batch_sizes)
        delay = info.max_queue_delay_us  # auto: the longest it makes a request wait
        batching.max_queue_delay_microseconds = (
            round(AUTO_MAX_DELAY_S * 1e6) if delay is None else delay
        )
        if delay is None:
            proto.parameters[AUTO_DELAY].string_value = "auto"
        batching.default_queue_policy.max_queue_size = config.max_queue_size
    return proto


def to_text(proto: config_pb.ModelConfig) -> str:
    """config.pbtxt's text: protobuf's text format, as Triton reads it."""
    return HEADER + text_format.MessageToString(proto)


def files_for(info: ModelInfo, config: ModelConfig) -> dict[str, str]:
    """The files a model folder needs for Triton: config.pbtxt, and labels.txt when the
    configuration names one (file name → text)."""
    proto = model_config(info, config)
    files = {CONFIG_FILE: to_text(proto)}
    if any(output.label_filename for output in proto.output):
        files[LABELS_FILE] = "".join(f"{label}\n" for label in info.labels or ())
    return files


def _tensors(proto: config_pb.ModelConfig) -> list[tuple]:
    return [
        (kind, t.name, t.data_type, list(t.dims))
        for kind, tensors in (("input", proto.input), ("output", proto.output))
        for t in tensors
    ]


def export_files(folder: Path, version: str, model: bytes) -> tuple[dict[str, str], str]:
    """What `netc export --repository` writes beside a new version of the model in
    `folder`: config.pbtxt (and labels.txt) as the server would report the version with
    the folder's config.yaml (file name → text), and a note for the user ("" if none).

    A config.pbtxt already there is the user's (or an earlier export's) and is kept; the
    note says so when it describes other inputs or outputs than this version has."""
    import onnxruntime as ort

    from netc.serving.model import describe, ort_log_level

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    config = load_config(folder)
    info = describe(folder.name, version, session, config)
    path = folder / CONFIG_FILE
    if not path.exists():
        return files_for(info, config), ""
    kept, _ = _parse(path)
    differ = _tensors(kept) != _tensors(model_config(info, config))
    if not differ:
        return {}, ""
    return {}, (
        f"warning: kept {path}, which describes other inputs or outputs than version "
        f"{version} has; Triton will refuse the version until it is updated (delete it "
        "and export again to have it written)"
    )


# Reading.


class _Source:
    """config.pbtxt's name and text, to place a mistake at the line of its field."""

    def __init__(self, where: str, text: str) -> None:
        self.where, self.lines = where, text.splitlines()

    def error(self, field: str, message: str) -> UserError:
        """A UserError at the first line setting `field` (a name or dotted path: its last
        part), else at the file."""
        pattern = re.compile(rf"\b{re.escape(field.rsplit('.', 1)[-1])}\s*[:{{\[]")
        for number, line in enumerate(self.lines, 1):
            found = pattern.search(line.split("#", 1)[0])
            if found:
                return UserError(message, loc=SourceLoc(self.where, number, found.start() + 1))
        return UserError(f"{self.where}: {message}")


def _parse(path: Path) -> tuple[config_pb.ModelConfig, _Source]:
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read: {exc}") from None
    try:
        return text_format.Parse(text, config_pb.ModelConfig()), _Source(where, text)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        raise UserError(
            f"not a Triton model configuration: {reason}",
            loc=SourceLoc(where, line or 1, column or 1),
        ) from None


def _check_model(proto: config_pb.ModelConfig, folder: str, source: _Source) -> None:
    """What netc cannot serve at all, refused (as Triton refuses a name that is not its
    folder's)."""
    if proto.name and proto.name != folder:
        raise source.error(
            "name",
            f"the configuration names model '{proto.name}', but its folder is "
            f"'{folder}' (Triton refuses this too); make them the same",
        )
    for field, wanted in (("platform", PLATFORM), ("backend", BACKEND)):
        value = getattr(proto, field)
        if value and value != wanted:
            raise source.error(
                field, f"{field} '{value}': netc serves ONNX models on onnxruntime ('{wanted}')"
            )
    scheduling = proto.WhichOneof("scheduling_choice")
    if scheduling in ("sequence_batching", "ensemble_scheduling"):
        kind = scheduling.split("_")[0]
        raise source.error(scheduling, f"{scheduling}: netc does not serve {kind} models")
    if proto.default_model_filename not in ("", MODEL_FILE):
        raise source.error(
            "default_model_filename",
            f"default_model_filename '{proto.default_model_filename}': netc reads each "
            f"version's {MODEL_FILE}\n  hint: rename the files to {MODEL_FILE} and drop "
            "the setting",
        )


USED = {  # message type → the fields netc reads (or checks) of it
    "ModelConfig": {
        "name", "platform", "backend", "max_batch_size", "input", "output",
        "dynamic_batching", "instance_group", "version_policy", "parameters",
        "default_model_filename",
    },
    "ModelInput": {"name", "data_type", "dims", "format"},
    "ModelOutput": {"name", "data_type", "dims", "label_filename"},
    "ModelDynamicBatching": {
        "preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy"
    },
    "ModelQueuePolicy": {"max_queue_size"},
    "ModelInstanceGroup": {"name", "count", "kind"},
    "ModelVersionPolicy": {"latest", "all", "specific"},
}  # fmt: skip
OWN_PARAMETERS = (AUTO_DELAY, THREADS, PRECISION)  # precision: netc's report, not a setting


def ignored_fields(proto: config_pb.ModelConfig) -> list[str]:
    """The fields set that netc does not use, each named once, in the proto's order."""
    names = list(_unused(proto, ""))
    names += [f"parameters.{key}" for key in proto.parameters if key not in OWN_PARAMETERS]
    if any(group.kind != group.KIND_AUTO for group in proto.instance_group):
        names.append("instance_group.kind")  # netc runs on CUDA when it can, else the CPU
    if proto.version_policy.latest.num_versions > 1:
        names.append("version_policy.latest.num_versions")  # netc serves the newest one
    return list(dict.fromkeys(names))


def _unused(message: Message, prefix: str) -> Iterator[str]:
    """Dotted names of the fields set in `message` that netc does not read."""
    used = USED.get(message.DESCRIPTOR.name)
    for field, value in message.ListFields():
        if used is not None and field.name not in used:
            yield prefix + field.name
        elif field.message_type is not None and field.name != "parameters":
            for item in value if field.is_repeated else [value]:
                if field.message_type.name in USED:
                    yield from _unused(item, f"{prefix}{field.name}.")


def _labels(proto: config_pb.ModelConfig, folder: Path, source: _Source) -> tuple[str, ...] | None:
    """The first output's label file, a label a line (as Triton reads it)."""
    name = next((o.label_filename for o in proto.output if o.label_filename), "")
    if not name:
        return None
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise source.error(
            "label_filename", f"label_filename '{name}' must be in the model's folder"
        )
    try:
        return tuple((folder / name).read_text().splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise source.error(
            "label_filename", f"cannot read label_filename '{name}': {reason}"
        ) from None


def _policy(proto: config_pb.ModelConfig, source: _Source):
    choice = proto.version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all"
    if choice == "specific":
        versions = list(proto.version_policy.specific.versions)
        if not versions or any(v < 1 for v in versions):
            raise source.error("specific", "version_policy specific needs versions 1 or above")
        return tuple(versions)
    return "latest"


def _delay(proto: config_pb.ModelConfig, source: _Source) -> int | None:
    if AUTO_DELAY in proto.parameters and proto.parameters[AUTO_DELAY].string_value == "auto":
        return None
    delay = proto.dynamic_batching.max_queue_delay_microseconds
    if delay > MAX_DELAY_US:
        raise source.error(
            "max_queue_delay_microseconds",
            f"max_queue_delay_microseconds {delay:,} is more than a minute ({MAX_DELAY_US:,})",
        )
    return delay


def _threads(proto: config_pb.ModelConfig, source: _Source) -> int:
    if THREADS not in proto.parameters:
        return 0
    text = proto.parameters[THREADS].string_value
    if not text.isdigit():
        raise source.error(THREADS, f"parameter {THREADS} must be a whole number, found '{text}'")
    return int(text)


def _format(proto: config_pb.ModelConfig) -> str | None:
    """The first input's layout that is not FORMAT_NONE (netc keeps one for the model)."""
    names = {value: name for name, value in FORMATS.items()}
    return next((names[i.format] for i in proto.input if i.format in names), None)


def _counts(proto: config_pb.ModelConfig, source: _Source) -> tuple[int, int]:
    """(max_batch_size, instances), checked: Triton's int32 fields may hold negatives."""
    if proto.max_batch_size < 0:
        raise source.error(
            "max_batch_size", f"max_batch_size must be 0 or more, found {proto.max_batch_size}"
        )
    counts = [group.count for group in proto.instance_group]
    if any(count < 0 for count in counts):
        raise source.error("count", f"instance_group count must be 1 or more, found {min(counts)}")
    return proto.max_batch_size, sum(count or 1 for count in counts) or DEFAULTS.instances


def settings(proto: config_pb.ModelConfig, folder: Path, source: _Source) -> ModelConfig:
    """netc's settings for the model in `folder` from Triton's configuration `proto`."""
    _check_model(proto, folder.name, source)
    max_batch_size, instances = _counts(proto, source)
    batching = proto.dynamic_batching
    sizes = tuple(sorted(batching.preferred_batch_size))
    if any(size < 1 for size in sizes):
        raise source.error(
            "preferred_batch_size", f"preferred_batch_size must be positive, found {list(sizes)}"
        )
    enabled = proto.WhichOneof("scheduling_choice") == "dynamic_batching"
    return ModelConfig(
        max_batch_size=max_batch_size,
        dynamic_batching=enabled,
        max_queue_delay_us=_delay(proto, source) if enabled else DEFAULTS.max_queue_delay_us,
        preferred_batch_sizes=sizes,
        max_queue_size=batching.default_queue_policy.max_queue_size or DEFAULTS.max_queue_size,
        instances=instances,
        intra_op_threads=_threads(proto, source),
        labels=_labels(proto, folder, source),
        version_policy=_policy(proto, source),
        input_format=_format(proto),
        source=source.where,
    )


def from_json(text: str, folder: Path) -> tuple[ModelConfig, list[str]]:
    """netc's settings from a ModelConfig in JSON, as RepositoryModelLoad's `config`
    parameter brings it (Triton's override), for the model in `folder`; and the fields
    set that netc ignores."""
    source = _Source("the load's config parameter", text)
    try:
        proto = json_format.Parse(text, config_pb.ModelConfig())
    except json_format.ParseError as exc:
        raise UserError(f"{source.where} is not a Triton ModelConfig in JSON: {exc}") from None
    return settings(proto, folder, source), ignored_fields(proto)


def read_config(path: Path) -> ModelConfig:
    """netc's settings from a Triton config.pbtxt. The fields netc ignores are named in
    the log, once for each file and set of fields, however often the model reloads."""
    proto, source = _parse(path)
    config = settings(proto, path.parent, source)
    ignored = tuple(ignored_fields(proto))
    if ignored and (source.where, ignored) not in _told:
        _told.add((source.where, ignored))
        log.warning(
            "warning: model %s: %s sets Triton settings netc does not use, ignored: %s",
            path.parent.name,
            source.where,
            ", ".join(ignored),
        )
    return config
