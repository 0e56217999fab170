"""Export a trained student to a self-describing directory, and load it back with `radio.load`.

One module per responsibility (each imports only the ones above it in this list, never this package's
`__init__`, so the package has no import cycle):

- `format`: file names, ExportError / UnverifiedExportWarning, the `verification` default, checksums, JSON,
  parsing a native config.json into a ModelConfig;
- `state`: building the model a config describes and filling it from a state dict, strictly;
- `card`: the model card (`README.md`) of an export, with eval results from a report.json;
- `read`: `read_export`, `verify_weights`, `read_weights`, `load` (what `radio.load` is);
- `onnx`: the ONNX graph with dynamic batch/height/width and its onnxruntime check;
- `hf`: transformers `AutoConfig`/`AutoModel` classes (imports transformers; registered by `import radio`
  once transformers is imported);
- `timm`: the `radio_student` timm entry point (registered by `import radio`);
- `write`: checkpoint -> export directory (`export_checkpoint`, `export_model`, `save_model`), in the
  ``safetensors``, ``hf`` or ``onnx`` layout.

An export is untrusted input: `radio.load` never unpickles anything (JSON + safetensors only), checks the
checksums config.json records (`weights_sha256`, `config_sha256`), type- and range-checks every config value
and checks every tensor's key, shape, dtype and finiteness; any failure is an `ExportError` naming the file
and the key.
"""
from radio.export.format import (
    CHECKSUM_KEYS,
    CONFIG_CHECKSUM_SINCE,
    CONFIG_NAME,
    EXPORT_KEYS,
    FORMATS,
    HF_MODEL_TYPE,
    HF_PREFIX,
    ONNX_NAME,
    PICKLE_NAMES,
    WEIGHTS_NAME,
    ExportError,
    UnverifiedExportWarning,
    config_sha256,
    file_sha256,
    parse_export_config,
    read_json,
    verification,
)
from radio.export.read import (
    ExportInfo,
    check_weights_header,
    load,
    read_export,
    read_weights,
    verify_weights,
)
from radio.export.state import build_model, check_finite, load_into, restore_derived_buffers
from radio.export.write import (
    export_checkpoint,
    export_config,
    export_model,
    model_from_checkpoint,
    read_checkpoint,
    save_model,
    save_weights,
    select_adaptors,
)

__all__ = [
    "CHECKSUM_KEYS", "CONFIG_CHECKSUM_SINCE", "CONFIG_NAME", "EXPORT_KEYS", "FORMATS", "HF_MODEL_TYPE",
    "HF_PREFIX", "ONNX_NAME", "PICKLE_NAMES", "WEIGHTS_NAME", "ExportError", "UnverifiedExportWarning",
    "config_sha256", "file_sha256", "parse_export_config", "read_json", "verification",
    "ExportInfo", "check_weights_header", "load", "read_export", "read_weights", "verify_weights",
    "build_model", "check_finite", "load_into", "restore_derived_buffers",
    "export_checkpoint", "export_config", "export_model", "model_from_checkpoint", "read_checkpoint",
    "save_model", "save_weights", "select_adaptors",
]
