"""What every benchmark shares: the data sets and questions, machine and process readings, the
service's /metrics, percentiles, and where the figures go.

- data: the shared sets by path (`shared_data`, `require_data`), a corpus read or cut short
  (`read_corpus`, `limited_corpus`), questions made from its documents with a seed (`make_questions`)
  or sampled from an evaluation set (`eval_questions`), a store built in process or by the indexer's
  command (`build_store`, `index_command`);
- readings: the machine (`machine`, `machine_summary`: cores, CPU model, load, memory, key package
  versions, malloc), the code measured (`code_state`), the 1-minute load (`load_average`), CPU
  time (`own_cpu_seconds`, `cpu_seconds`), a process's memory and allocator (`memory_mib`, `malloc`),
  who listens on a URL (`listening_pid`) and where the machine's CPU went over a stretch (`CpuMeter`);
- the service: every /metrics sample (`scrape`) and the mean time per stage between two scrapes
  (`stage_means_ms`); starting it, or an LLM server, is service/processes.py's (`running_service`,
  `running_process`); `offline` keeps the model loading off any hub;
- results: `percentiles` (the one function, shared with ragqa-eval), the command line run
  (`command_line`), the options `--corpus` and `--results DIR` (`add_corpus_option`,
  `add_results_option`) and `publish`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil

from indexer.chunking import split_sentences
from service.eval import Dataset, Question, load_dataset, sample
from service.eval import percentiles as percentiles  # the one percentile function, shared with ragqa-eval
from service.processes import index_command as index_command  # the indexer's command, a process of its own

if TYPE_CHECKING:
    from indexer.embedding import Embedder

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"  # next to the repository; a plain clone has none
KEY_PACKAGES = (
    "torch",
    "sentence-transformers",
    "transformers",
    "faiss-cpu",
    "numpy",
    "fastapi",
    "uvicorn",
    "httpx",
    "llama-cpp-python",
)
STAGES = ("encode", "retrieve", "answer")  # the stages of ragqa_stage_seconds (and of timings_ms)

# --- data sets and questions ---------------------------------------------------------------------


def shared_data(relative: str) -> Path:
    """A path under ../shared/data next to the repository, e.g. "corpus/wiki-leads-10k.jsonl"."""
    return SHARED_DATA / relative


def require_data(parser: argparse.ArgumentParser, path: Path, option: str) -> None:
    """Stop with a usage error (exit 2) when a data set the benchmark reads is missing."""
    if not path.exists():
        parser.error(
            f"not found: {path}. The shared data sets live in {SHARED_DATA} next to the repository, "
            f"which a plain clone does not have; pass {option} PATH."
        )


@dataclass(frozen=True)
class Doc:
    title: str
    text: str


def read_corpus(path: Path, limit: int | None = None) -> list[Doc]:
    """The documents of a jsonl corpus ({"title", "text", ...} a line), the first `limit` only if set."""
    docs: list[Doc] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(docs) >= limit:
                break
            if line.strip():
                record = json.loads(line)
                docs.append(Doc(str(record.get("title") or ""), str(record.get("text") or "")))
    return docs


def limited_corpus(corpus: Path, limit: int, folder: Path) -> Path:
    """The first `limit` documents of a jsonl corpus, in a file under `folder` that is rewritten only
    when its text changes (so that a store built from it is reused by a rerun)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{corpus.stem}-first{limit}.jsonl"
    lines: list[str] = []
    with open(corpus, encoding="utf-8") as src:
        for line in src:
            if len(lines) >= limit:
                break
            if line.strip():
                lines.append(line if line.endswith("\n") else line + "\n")
    text = "".join(lines)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return target


TITLE_TEMPLATES = (
    "What is {t}?",
    "Where is {t}?",
    "Who was {t}?",
    "When was {t} founded?",
    "What is known about {t}?",
    "Why is {t} notable?",
    "Tell me about {t}.",
)
FRAGMENT_TEMPLATES = ("{f}", "{f}?", "What about {f}?", "Which {f}?")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _question_about(doc: Doc, rng: random.Random) -> str | None:
    """A title template or a fragment (5–12 words) of the first sentence, chosen at random."""
    if doc.title and rng.random() < 0.5:
        return rng.choice(TITLE_TEMPLATES).format(t=doc.title)
    words = SENTENCE_END.split(doc.text.strip(), maxsplit=1)[0].split()
    if len(words) < 6:
        return rng.choice(TITLE_TEMPLATES).format(t=doc.title) if doc.title else None
    size = rng.randint(5, min(12, len(words)))
    start = rng.randint(0, len(words) - size)
    fragment = " ".join(words[start : start + size]).strip(" ,;:.()\"'")
    return rng.choice(FRAGMENT_TEMPLATES).format(f=fragment) if fragment else None


def make_questions(docs: list[Doc], count: int, seed: int) -> list[str]:
    """`count` distinct questions made from the documents (deterministic for a seed), each about
    another document while there are enough of them."""
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    seen: set[str] = set()
    out: list[str] = []
    for attempt in range(count * 50):
        if len(out) == count or not order:
            break
        question = _question_about(docs[order[attempt % len(order)]], rng)
        if question and 1 <= len(question) <= 2000 and question.casefold() not in seen:
            seen.add(question.casefold())
            out.append(question)
    if len(out) < count:
        raise SystemExit(
            f"could only make {len(out)} distinct questions of {count} from {len(docs)} documents"
        )
    return out


def eval_questions(folder: Path, size: int | None, seed: int) -> tuple[Dataset, list[Question]]:
    """An evaluation set in the BEIR layout (e.g. shared_data("eval/squad2-dev")) and its answerable
    questions sampled as ragqa-eval samples them (`random.Random(seed)`, all when `size` is None)."""
    dataset = load_dataset(folder, need_corpus=True)
    answerable, _ = sample(dataset, size, seed)
    return dataset, answerable


def build_store(sources: list[Path], store: Path) -> dict[str, Any]:
    """Index in process, incrementally (an unchanged corpus embeds and publishes nothing), as
    ragqa-eval does; what the run did and how long it took."""
    from service.eval import index_corpus

    print(
        f"indexing {', '.join(map(str, sources))} into {store} (incremental) ...", file=sys.stderr, flush=True
    )
    started = time.perf_counter()
    report = index_corpus(sources, store)
    return {
        "version": report.version,
        "documents": report.documents,
        "chunks": report.chunks,
        "embedded": report.embedded,
        "seconds": round(time.perf_counter() - started, 1),
    }


def offline() -> None:
    """The bundled model is a local folder: never reach for a model hub (this process and the
    processes it starts)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- machine and process readings ----------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average: other work on the machine skews the timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: Sequence[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def malloc(pid: int | None = None) -> str:
    """The allocator of a running process (jemalloc when its memory maps show it), or, without a pid,
    the one ragqa-serve runs with on this machine (it preloads jemalloc when installed: service/cli.py)."""
    if pid is not None:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                return "jemalloc" if "jemalloc" in fh.read() else "the C library's"
        except OSError:
            return "unknown"
    from service.cli import JEMALLOC

    if os.environ.get("RAGQA_JEMALLOC", "1") == "0":
        return "the C library's (RAGQA_JEMALLOC=0)"
    library = next((path for path in JEMALLOC if os.path.exists(path)), None)
    return f"jemalloc ({library})" if library else "the C library's (no jemalloc installed)"


def machine() -> dict[str, Any]:
    """The machine a benchmark runs on, now: cores, CPU model, load, memory, Python and the key
    packages, the allocators, and torch's threads in this process when torch is loaded."""
    memory = psutil.virtual_memory()
    torch = sys.modules.get("torch")
    try:
        loads: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        loads = None
    return {
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "load_average_1_5_15min": loads,
        "memory_mib": {"total": round(memory.total / 2**20), "available": round(memory.available / 2**20)},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "malloc": {"this process": malloc(os.getpid()), "ragqa-serve": malloc()},
    }


def machine_summary(reading: dict[str, Any]) -> str:
    """One line for a results table: cores, CPU, memory, load, torch, malloc."""
    loads = reading["load_average_1_5_15min"]
    torch = reading["packages"].get("torch")
    threads = f", {reading['torch_threads']} threads" if reading["torch_threads"] else ""
    return (
        f"{reading['cpus']} CPUs ({reading['cpu_model']}), {reading['memory_mib']['total'] / 1024:.1f} GiB"
        f" ({reading['memory_mib']['available'] / 1024:.1f} free), load {loads[0] if loads else '–'};"
        f" Python {reading['python']}, torch {torch or '–'}{threads}; malloc of ragqa-serve:"
        f" {reading['malloc']['ragqa-serve']}"
    )


def code_state(*paths: str) -> dict[str, Any]:
    """Which code was measured: the commit and the files changed since under `paths` (read-only git:
    no index refresh)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": git("status", "--porcelain", "--", *paths).splitlines(),
    }


def own_cpu_seconds() -> float:
    """User plus system CPU time this process has used (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time process `pid` has used; None when it is not known or cannot be read."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; time stolen by the hypervisor included)."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")))


@dataclass
class CpuMeter:
    """Where the machine's CPU went between `start()` and `stop()`: the server, this process, and
    everything else. Other processes' use is what makes a run unreliable on a shared machine."""

    server_pid: int | None
    began: float = 0.0
    machine: float = 0.0
    server: float | None = None
    bench: float = 0.0

    def start(self) -> CpuMeter:
        self.began = time.perf_counter()
        self.machine = machine_busy_seconds()
        self.server = cpu_seconds(self.server_pid)
        self.bench = own_cpu_seconds()
        return self

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.began
        machine = machine_busy_seconds() - self.machine
        bench = own_cpu_seconds() - self.bench
        after = cpu_seconds(self.server_pid)
        server = after - self.server if after is not None and self.server is not None else None
        others = machine - bench - (server or 0.0)
        return {
            "wall_seconds": round(wall, 3),
            "server_cpu_seconds": None if server is None else round(server, 3),
            "bench_cpu_seconds": round(bench, 3),
            # Without the server's pid (--url and no permission) the server counts as "others".
            "others_cores": round(max(others, 0.0) / wall, 3) if wall > 0 else None,
        }


def memory_mib(pid: int | None) -> dict[str, float | None]:
    """Resident set size now and its peak so far (VmHWM, Linux) of process `pid` (`os.getpid()`:
    this one), in MiB; None where it cannot be read (or the pid is not known)."""
    rss: float | None = None
    peak: float | None = None
    if pid is None:
        return {"rss": rss, "peak": peak}
    try:
        rss = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peak = round(int(line.split()[1]) / 1024, 1)
    except (psutil.Error, OSError):
        pass
    if peak is None and pid == os.getpid():  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = round(maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024, 1)
    return {"rss": rss, "peak": peak}


def listening_pid(url: str) -> int | None:
    """The pid that listens on the URL's port (best effort: may need the right to see it)."""
    port = urlsplit(url).port
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (psutil.Error, OSError):
        pass
    return None


# --- the service's /metrics ----------------------------------------------------------------------

MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> MetricSamples:
    """Every sample of the service's /metrics, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{url}/metrics", timeout=30)
    response.raise_for_status()
    out: MetricSamples = {}
    for family in text_string_to_metric_families(response.text):
        for sample_ in family.samples:
            out[(sample_.name, tuple(sorted(sample_.labels.items())))] = float(sample_.value)
    return out


def histogram_mean_ms(before: MetricSamples, after: MetricSamples, name: str, **labels: str) -> float | None:
    """The mean observation, in ms, of histogram `name` with `labels` between two scrapes."""
    key = tuple(sorted(labels.items()))
    count = after.get((f"{name}_count", key), 0.0) - before.get((f"{name}_count", key), 0.0)
    total = after.get((f"{name}_sum", key), 0.0) - before.get((f"{name}_sum", key), 0.0)
    return round(total / count * 1000, 2) if count > 0 else None


def stage_means_ms(
    before: MetricSamples, after: MetricSamples, route: str | None = None
) -> dict[str, float | None]:
    """Mean ms per stage (encode, retrieve, answer) between two scrapes, and of POST `route` if given."""
    means: dict[str, float | None] = {}
    if route is not None:
        request = "ragqa_http_request_seconds"
        means["route"] = histogram_mean_ms(before, after, request, method="POST", route=route)
    for stage in STAGES:
        means[stage] = histogram_mean_ms(before, after, "ragqa_stage_seconds", stage=stage)
    return means


# --- results -------------------------------------------------------------------------------------


def command_line(module: str, argv: list[str] | None) -> str:
    """How the benchmark was run: `python -m bench.NAME ARGS`, the interpreter relative to the
    working folder when it lies inside it (`.venv/bin/python`)."""
    executable = Path(sys.executable)
    if executable.is_relative_to(Path.cwd()):
        executable = executable.relative_to(Path.cwd())
    return shlex.join([str(executable), "-m", module, *(sys.argv[1:] if argv is None else argv)])


def add_corpus_option(parser: argparse.ArgumentParser, default: Path) -> None:
    parser.add_argument("--corpus", type=Path, default=default, help=f"jsonl corpus (default {default})")


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def publish(name: str, result: dict[str, Any], text: str, folder: Path = RESULTS) -> None:
    """Print the Markdown summary and write it, with the full result as JSON, as NAME.md and
    NAME.json under `folder` (bench/results by default)."""
    print(text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (folder / f"{name}.md").write_text(text + "\n", encoding="utf-8")


# --- the corpus's sentences and their vectors (bench/scale.py, bench/ann.py) -------------------------

MIN_WORDS, MAX_CHARS = 4, 600  # the corpus sentences used: documents' sentences, queries
POOL_CACHE = REPO / "var" / "scale"  # where the pool's vectors are kept between runs
POOL_BATCH = 128  # sentences per model call when the pool is encoded
POOL_SLAB = 4_096  # sentences encoded between two progress lines
VECTOR_SLAB = 8_192  # mean vectors made at a time


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sentence:
    text: str
    title: str  # of the article it comes from
    index: int  # its position in the pool (and its row of the pool's vectors)


def sentence_pool(corpus: Path) -> list[Sentence]:
    """Every distinct sentence of the corpus (split as the chunker splits) of MIN_WORDS words or more
    and MAX_CHARS characters or fewer, in corpus order."""
    seen: set[str] = set()
    pool: list[Sentence] = []
    with open(corpus, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            text, title = str(record.get("text") or ""), str(record.get("title") or "")
            for start, end in split_sentences(text):
                sentence = text[start:end]
                if len(sentence.split()) >= MIN_WORDS and len(sentence) <= MAX_CHARS and sentence not in seen:
                    seen.add(sentence)
                    pool.append(Sentence(sentence, title, len(pool)))
    return pool


def normalised(rows: np.ndarray) -> np.ndarray:
    """The rows (float32) scaled to unit length, in place."""
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return rows


def pool_vectors_path(corpus_sha: str, model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")
    return POOL_CACHE / f"pool-vectors-{corpus_sha[:12]}-{safe}.npy"


def pool_vectors(pool: list[Sentence], embedder: Embedder, corpus_sha: str) -> np.ndarray:
    """Every pool sentence's vector by the real model (float32, L2-normalised, pool order): read from
    var/scale/pool-vectors-<corpus sha[:12]>-<model>.npy when it holds one row per sentence, else
    encoded now (the model's batch `encode`, POOL_BATCH sentences a batch, a few minutes on two cores)
    and saved there for the next run."""
    path = pool_vectors_path(corpus_sha, embedder.info.name)
    expected = (len(pool), embedder.info.dimension)
    if path.is_file():
        try:
            cached = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            log(f"{path} cannot be read ({exc}): encoding the pool again")
        else:
            if cached.shape == expected and cached.dtype == np.float32:
                log(f"the pool's {len(pool):,} sentence vectors: reusing {path}")
                return np.array(cached)
            log(
                f"{path} holds {cached.shape} {cached.dtype}, not {expected} float32: encoding the pool again"
            )
    log(
        f"encoding the pool's {len(pool):,} sentences with {embedder.info.name} (batches of {POOL_BATCH},"
        f" once per corpus and model; cached in {path}) ..."
    )
    batcher = copy.copy(embedder)  # the same model, another batch size
    batcher.batch_size = POOL_BATCH
    started = time.perf_counter()
    out = np.empty(expected, dtype=np.float32)
    for at in range(0, len(pool), POOL_SLAB):
        slab = [s.text for s in pool[at : at + POOL_SLAB]]
        out[at : at + len(slab)] = batcher.encode(slab)
        log(f"  {at + len(slab):,} / {len(pool):,} in {time.perf_counter() - started:.0f} s")
    normalised(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, out)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    log(f"encoded the pool in {time.perf_counter() - started:.0f} s")
    return out


def document_vectors(pool_vectors: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """One vector per row of `picks` (pool indices of a document's sentences): the L2-normalised mean of
    those sentences' vectors (float32), made VECTOR_SLAB rows at a time."""
    out = np.empty((len(picks), pool_vectors.shape[1]), dtype=np.float32)
    for at in range(0, len(picks), VECTOR_SLAB):
        block = pool_vectors[picks[at : at + VECTOR_SLAB]].mean(axis=1, dtype=np.float32)
        out[at : at + len(block)] = normalised(block)
    return out


def corpus_sha256(corpus: Path) -> str:
    digest = hashlib.sha256()
    with open(corpus, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def distinct_picks(rng: np.random.Generator, rows: int, pool_size: int, per_row: int) -> np.ndarray:
    """`rows` rows of `per_row` distinct pool indices each (seeded by `rng`): a row with a repeat is
    drawn again."""
    picks = rng.integers(0, pool_size, size=(rows, per_row))
    while True:
        ordered = np.sort(picks, axis=1)
        repeated = np.flatnonzero((np.diff(ordered, axis=1) == 0).any(axis=1))
        if not len(repeated):
            return picks
        picks[repeated] = rng.integers(0, pool_size, size=(len(repeated), per_row))
