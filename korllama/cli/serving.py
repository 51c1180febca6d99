"""`korllama export`, `serve` and `demo`: the run handed on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from korllama.choices import Decision, MergeInto
from korllama.cli.app import (
    AllowUnfinishedOption,
    AllowUnrecordedOption,
    DecisionOption,
    OverwriteOption,
    app,
    console,
    err_console,
)
from korllama.defaults import HEADER_TIMEOUT_S, MAX_BATCH, MAX_DISK_MB, MAX_JOBS, MAX_WAIT_MS
from korllama.errors import KorllamaError


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A finished run directory made by `korllama train`.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty): a Hugging Face model "
                                                    "folder.")] = ...,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous export in --out (a folder of "
                                                                "other files is never replaced).")] = False,
    merge_into: Annotated[MergeInto, typer.Option(
        "--merge-into", help="A run trained on a 4-bit base (QLoRA): merge its adapter into the base's NF4 weights "
                             "read back to float (dequantized: the weights it was trained against, so the folder "
                             "scores as the run did), or into the base's original full-precision weights (original: "
                             "the peft / LLaMA-Factory way; the scores differ from the run's by the quantisation "
                             "error, which can change grades). A run on a full-precision base merges into "
                             "that base either way.")] = MergeInto.DEQUANTIZED,
    allow_unrecorded: AllowUnrecordedOption = False,
):
    """Write the run as a standard Hugging Face model folder for other serving stacks (vLLM, TGI, transformers).

    LoRA is merged into the base (merge_and_unload; a run trained on a 4-bit base into its 4-bit weights read back
    to float, or with --merge-into original into the full-precision base, its agreement with the run measured either
    way), a full-weight run is saved as is: safetensors, the tokenizer, a generation config, and korllama.json +
    README.md recording the labels, their token ids, the prompt template and the spec, so that another tool can
    score it.

    Loadable by AutoModelForCausalLM.from_pretrained(DIR).

    Example:
      korllama export runs/dacon-tiny --out exports/dacon-tiny
    """
    from korllama.export import claim_export

    claim_export(out, overwrite)  # before the run's weights are loaded
    from korllama.export import export_run
    from korllama.run import Run

    exported = Run.load(run, allow_unfinished=True, allow_unrecorded=allow_unrecorded)  # export_run refuses it, its way
    r = export_run(exported, out, overwrite=overwrite, merge_into=merge_into)
    check = r["check"]
    agreed = (f"; its probabilities equal the run's within {check['max_abs_difference']:.1e} on "
              f"{check['rows']} example rows" if check["max_abs_difference"] is not None else "")
    if r["quantisation"] and check["max_abs_difference"] is not None:  # the 4-bit run's adapter on a float base
        agreed = (f"; it gives the 4-bit run's label on {check['labels_equal']:.1%} of {check['rows']} "
                  f"{check['rows_from']} rows (max |dP| {check['max_abs_difference']:.2g})")
    console.print(f"exported {escape(str(run))} ({r['weights']}, {r['dtype']}) -> {escape(r['out'])}{agreed}")


@app.command("serve")
def serve_cmd(
    run: Annotated[Path, typer.Argument(help="A run directory made by `korllama train`, or the trees' folder made by "
                                             "`korllama baseline`.", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on: 127.0.0.1 is this machine only; "
                                                     "0.0.0.0 opens the service to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most applicants scored in one forward "
                                                                      "pass.")] = MAX_BATCH,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0, help="How long the first pending request waits for others to batch "
                                     "with.")] = MAX_WAIT_MS,
    decision: DecisionOption = Decision.ARGMAX,
    allow_unfinished: AllowUnfinishedOption = False,
    allow_unrecorded: AllowUnrecordedOption = False,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="A host name (or address) clients reach the service by, besides 127.0.0.1, localhost, "
                             "[::1] and --host; repeat it for several. Requests for any other Host are refused "
                             "(DNS rebinding); '*' allows every name (only behind a proxy that checks it).")] = None,
    max_jobs: Annotated[int, typer.Option("--max-jobs", min=1, help="Files the page takes at once (waiting or "
                                                                     "being graded); past it an upload is a 429.")]
    = MAX_JOBS,
    max_disk_mb: Annotated[int, typer.Option("--max-disk-mb", min=1, help="MB of uploaded and graded files the page "
                                                                          "keeps on disk; past it an upload is a "
                                                                          "429.")] = MAX_DISK_MB,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", min=0.1, help="Seconds a client has to send a request's headers before its connection is "
                                          "closed.")] = HEADER_TIMEOUT_S,
):
    """Serve the run's rank scoring over HTTP: a grading page at /, POST /v1/grade, GET /health, docs at /docs.

    RUN is an LLM run or the trees' folder of `korllama baseline`. Requests arriving together are scored in one
    batched pass.

    Set KORLLAMA_TOKEN to require `Authorization: Bearer <token>` on /v1/grade and the page's run and files. Only
    requests for this service's own host names are answered (loopback, --host, --allow-host).

    Example:
      korllama serve runs/demo/run --port 8000
    """
    import os

    import uvicorn

    token = os.environ.get("KORLLAMA_TOKEN")
    if token is not None and token != token.strip():
        raise KorllamaError("KORLLAMA_TOKEN is blank or starts or ends with a space, which no HTTP client can send "
                            "(header values are trimmed); set a token without spaces at its ends, or unset it.")
    _check_port(host, port)  # before the model is loaded: a busy port is one sentence, not uvicorn's exit 3
    _idle_threads_sleep()
    from korllama.serve import create_app
    from korllama.serve.guard import LOOPBACK, header_timeout_protocol
    from korllama.serve.jobs import Limits
    from korllama.system import load_system

    served = load_system(run, way_out="serve the --out folder of a finished `korllama train`, or of `korllama "
                                      "baseline`", allow_unfinished=allow_unfinished, allow_unrecorded=allow_unrecorded)
    bound = [host] if host not in ("0.0.0.0", "::", "") else []  # a wildcard address is no name a client sends
    application = create_app(served, max_batch=max_batch, max_wait_ms=max_wait_ms, decision=decision,
                             allowed_hosts=[*LOOPBACK, *bound, *(allow_host or [])],
                             limits=Limits(max_jobs=max_jobs, max_disk_bytes=max_disk_mb * 2**20))
    shown = f"[{host}]" if ":" in host else host
    has_token = bool(token)
    auth = "bearer token required ($KORLLAMA_TOKEN)" if has_token else "no token"
    console.print(f"serving {escape(str(run))} on {escape(f'http://{shown}:{port}')} (the page at /, docs at /docs, "
                  f"{auth}); Ctrl+C stops",
                  soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not has_token:
        err_console.print(f"[yellow]warning:[/] listening on {escape(host)} without a token: anyone who can reach "
                          "this port can use the model (set KORLLAMA_TOKEN).", soft_wrap=True)
    if not bound and not allow_host:
        err_console.print(f"[yellow]note:[/] listening on {escape(host)}, but only requests for 127.0.0.1, localhost "
                          "and [::1] are answered: add --allow-host NAME for the name clients reach this machine by.",
                          soft_wrap=True)
    uvicorn.run(application, host=host, port=port, log_level="info", http=header_timeout_protocol(header_timeout))


def _idle_threads_sleep() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the user set it, before torch (and LightGBM) load their OpenMP: by default its
    idle threads spin between forward passes, and on a loaded machine they took the CPU the event loop and the other
    processes needed: 126 CPU ms per idle single-applicant request against 22 ms (benchmarks/RESULTS.md section 26).
    libgomp reads it once, when it loads, so it is set only when torch is not loaded yet."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


DEMO_FILES = ("data.csv", "run", "eval", "report.html")  # what marks a demo's folder (korllama.demo writes them)


def _check_port(host: str, port: int) -> None:
    """Bind the address as uvicorn will (SO_REUSEADDR, so a port in TIME_WAIT passes), then let it go."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            raise KorllamaError(f"--host {host} is not an address this machine can listen on (e.g. 127.0.0.1 or "
                                "0.0.0.0).") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise KorllamaError(f"Port {port} on {host} is already in use (another server listens there); stop "
                                    "it, or choose another --port.") from None
            raise KorllamaError(f"Cannot listen on {host} port {port}: {exc.strerror or exc}.") from None


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="The demo's folder: new or empty (a previous demo is replaced "
                                                    "with --overwrite).")] = Path("runs/demo"),
    rows: Annotated[int, typer.Option("--rows", min=50, help="Rows of synthetic data.")] = 4000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    overwrite: OverwriteOption = False,
):
    """Run the whole loop on the embedded default: synthetic data -> train -> evaluate -> report (~1 min).

    Synthetic loan table -> check -> prompts -> the tiny Llama trained with configs/demo.yaml -> evaluation before
    and after tuning on held-out rows -> LightGBM baseline -> runs/demo/report.html.
    """
    from korllama.outputs import claim_dir

    claim_dir(out, overwrite, owns=DEMO_FILES, writes=None, what="a demo")  # before torch is even imported
    from korllama.demo import run_demo

    run_demo(out, rows=rows, seed=seed, console=console)
