"""Load test for `korllama serve`: mixed good and bad requests from concurrent clients, on loopback only.

Start a server first (this script starts nothing), then point the script at it:

    korllama serve runs/demo/run --port 8000 &          # any run directory made by `korllama train`
    python benchmarks/load_serve.py --url http://127.0.0.1:8000
    kill %1

With a token (KORLLAMA_TOKEN set for the server), pass the same one: `--token "$KORLLAMA_TOKEN"` (the default reads
$KORLLAMA_TOKEN). The script sends `--requests` (1,000) requests from `--clients` (8) concurrent asyncio + httpx
clients, then stops: 12 in 22 good ones (one applicant with raw Korean values or with clean English ones, lists
of 8 and 32) and 10 in 22 bad ones (a missing field, a wrong type, an unknown term, a negative amount, an unknown
key, a body that is not JSON, 1,025 applicants, an unpaired surrogate, a body sent as text/plain). It prints
requests/s, p50/p99 latency, the count of answers by status class, how many forward batches the server ran for them
(from /health), and the number of 5xx, which must be 0: the exit code is 1 when any request got a 5xx, no answer,
or a status of the wrong kind (a good request not answered 200, a bad one not answered 4xx).

With `--applicants CSV` (real rows, e.g. test.csv) it measures the service's cost instead (issue 27): first
`--idle` (200) requests of one applicant each, sent one at a time (p50/p99 latency on an otherwise idle service),
then `--requests` requests from `--clients` concurrent clients (bounded loop: each client sends its next request
when its previous one is answered), alternating one applicant and a list of `--batch` (64); the applicants are the
CSV's rows in file order, each request taking the next ones. It prints applicants/s, p50/p99 latency for the single
and the batched requests, the errors (anything but a 200, or no answer), the forward passes the server ran (from
/health), and with `--pid` the server's CPU seconds (user+sys) in each phase. The exit code is 1 on any error.
`--client raw` sends them on bare keep-alive connections instead of httpx's (half the client's CPU).

    korllama serve RUN --port 8765 & python benchmarks/load_serve.py --url http://127.0.0.1:8765 \
        --applicants ../shared/data/dacon-loan/test.csv --clients 32 --requests 2000 --pid $!
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from korllama.defaults import MAX_APPLICANTS
from korllama.synth import synthesize


def is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_kinds() -> list[tuple[str, bool, dict]]:
    """(name, good?, httpx request kwargs) for every kind of request, in the order they are mixed."""
    rows = synthesize(64, seed=0).drop(columns=["대출등급"]).astype(str)
    rows["ID"] = [f"LOAD_{i:05d}" for i in range(len(rows))]
    raw = rows.to_dict("records")
    one = raw[0] | {"대출기간": " 36 months", "근로기간": "10+ years", "대출목적": "부채 통합"}
    english = {"id": "LOAD_EN", "loan_amount": 12_000_000, "term": 36, "employment_length": 10,
               "home_ownership": "RENT", "annual_income": 72_000_000, "debt_to_income": 18.5, "total_accounts": 14,
               "purpose": "debt consolidation", "delinquencies_2y": 0, "principal_repaid": 1_200_000,
               "interest_repaid": 420_000, "overdue_amount": 0, "delinquent_accounts": 0}
    missing = {k: v for k, v in one.items() if k != "대출금액"}
    js = lambda body: {"json": body}  # noqa: E731
    return [
        ("one raw", True, js(one)),
        ("missing field", False, js(missing)),
        ("one clean", True, js(english)),
        ("wrong type", False, js(one | {"대출기간": [36]})),
        ("list of 8", True, js(raw[:8])),
        ("unknown term", False, js(one | {"대출기간": " 48 months"})),
        ("one raw", True, js(raw[5])),
        ("negative amount", False, js(english | {"loan_amount": -5})),
        ("list of 32", True, js(raw[8:40])),
        ("not JSON", False, {"content": b"ID,loan_amount\nX,1", "headers": {"content-type": "application/json"}}),
        ("one clean", True, js(english | {"id": "LOAD_EN2", "term": 60})),
        ("unknown key", False, js(english | {"loan_amt": 5})),
        ("list of 8", True, js(raw[40:48])),
        ("one raw", True, js(raw[9])),
        ("list of 8", True, js(raw[48:56])),
        (f"{MAX_APPLICANTS + 1:,} applicants", False, js([english] * (MAX_APPLICANTS + 1))),  # one over the limit
        ("one raw", True, js(raw[60])),
        ("one clean", True, js(english)),
        ("wrong type", False, js(english | {"annual_income": True})),
        ("list of 8", True, js(raw[56:64])),
        ("unpaired surrogate", False, {"content": json.dumps(one | {"ID": "\ud800"}).encode(),  # as its JSON escape
                                       "headers": {"content-type": "application/json"}}),
        ("text/plain", False, {"content": json.dumps(english).encode(), "headers": {"content-type": "text/plain"}}),
    ]


async def run(url: str, token: str | None, total: int, clients: int, timeout: float) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kinds = request_kinds()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as client:
        try:
            before = (await client.get("/health")).json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"no korllama server answers at {url} ({exc}); start one with `korllama serve RUN --port "
                  f"{httpx.URL(url).port or 8000}`", file=sys.stderr)
            return 2
        records: list[tuple[str, bool, int | None, float]] = []
        next_index = iter(range(total))

        async def one_client() -> None:
            for i in next_index:  # shared: every request is sent once, by whichever client is free
                name, good, kwargs = kinds[i % len(kinds)]
                started = time.perf_counter()
                try:
                    status = (await client.post("/v1/grade", **kwargs)).status_code
                except httpx.HTTPError:
                    status = None
                records.append((name, good, status, time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - started
        after = (await client.get("/health")).json()

    latency = np.array([r[3] for r in records]) * 1000
    good_latency = np.array([r[3] for r in records if r[1]]) * 1000
    classes = Counter("no answer" if s is None else f"{s // 100}xx" for _, _, s, _ in records)
    wrong = [(n, s) for n, good, s, _ in records
             if s is None or (good and s != 200) or (not good and not 400 <= s < 500)]
    n_good = sum(r[1] for r in records)
    print(f"{len(records):,} requests ({n_good:,} good, {len(records) - n_good:,} bad) from {clients} concurrent "
          f"clients to {url} in {seconds:.2f} s: {len(records) / seconds:.1f} requests/s")
    p50, p99 = np.percentile(latency, [50, 99])
    good50, good99 = np.percentile(good_latency, [50, 99]) if len(good_latency) else (np.nan, np.nan)
    print(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms (good requests: p50 {good50:.1f} ms, p99 {good99:.1f} ms)")
    print("status: " + ", ".join(f"{k} {classes.get(k, 0):,}" for k in ("2xx", "4xx", "5xx", "no answer")))
    graded = after.get("applicants", 0) - before.get("applicants", 0)
    batches = after.get("batches", 0) - before.get("batches", 0)
    if batches:
        print(f"server: {graded:,} applicants graded in {batches:,} batched score() calls "
              f"({after.get('forward_passes', 0) - before.get('forward_passes', 0):,} forward passes, "
              f"{graded / batches:.1f} applicants per call)")
    if wrong:
        print(f"answers of the wrong kind: {len(wrong)}, e.g. {json.dumps(Counter(map(str, wrong)).most_common(3))}")
    print(f"5xx: {classes.get('5xx', 0)}")
    return 1 if classes.get("5xx", 0) or wrong else 0


def cpu_seconds(pid: int | None) -> float | None:
    """user + sys CPU seconds a process has used so far (Linux /proc), or None without a pid."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14 and 15)


class RawConnection:
    """A bare HTTP/1.1 keep-alive connection on asyncio streams (`--client raw`): POST a JSON body, read the answer
    whole by its Content-Length, return the status. Half of httpx's CPU (2.5 s against 5.0 s for the same 2,200
    requests, RESULTS section 26), so that the client takes less of the cores the server shares."""

    def __init__(self, url: str, token: str | None):
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.extra = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{self.extra}\r\n")
        self.writer.write(head.encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.strip().lower() == "content-length" else length
            close = close or (name.strip().lower() == "connection" and "close" in value.lower())
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def cost(url: str, token: str | None, csv: Path, total: int, clients: int, batch: int, idle: int,
               timeout: float, pid: int | None, raw: bool = False) -> int:
    """The service's cost on real rows: idle single-applicant latency, then throughput under concurrent clients."""
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False).to_dict("records")
    pool: asyncio.Queue = asyncio.Queue()  # --client raw: one connection per concurrent client
    for _ in range(clients if raw else 0):
        pool.put_nowait(RawConnection(url, token))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    taken = [0]  # rows sent so far: the next request starts there (wrapping at the file's end)

    def next_rows(n: int) -> list[dict]:
        start = taken[0] % len(rows)
        taken[0] += n
        return (rows[start:start + n] + rows[:max(0, start + n - len(rows))])

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as client:
        try:
            before = (await client.get("/health")).json()
        except (httpx.HTTPError, ValueError) as exc:
            print(f"no korllama server answers at {url} ({exc})", file=sys.stderr)
            return 2

        async def send(body) -> tuple[int | None, float]:
            started = time.perf_counter()
            if raw:
                connection = await pool.get()
                try:
                    status = await asyncio.wait_for(connection.post("/v1/grade", json.dumps(
                        body, ensure_ascii=False).encode()), timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                    connection.close()
                    status = None
                pool.put_nowait(connection)
                return status, time.perf_counter() - started
            try:
                status = (await client.post("/v1/grade", json=body)).status_code
            except httpx.HTTPError:
                status = None
            return status, time.perf_counter() - started

        errors = 0
        cpu0 = cpu_seconds(pid)
        singles = []
        for _ in range(idle):  # one at a time: nothing else pending, so this is one applicant's whole trip
            status, seconds = await send(next_rows(1)[0])
            errors += status != 200
            singles.append(seconds)
        cpu1 = cpu_seconds(pid)
        mid = (await client.get("/health")).json()
        if idle:
            p50, p99 = np.percentile(np.array(singles) * 1000, [50, 99])
            print(f"idle: {idle} single-applicant requests one at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
                  + (f"; server CPU {cpu1 - cpu0:.2f} s ({(cpu1 - cpu0) / idle * 1000:.1f} ms a request)"
                     if pid else "")
                  + f"; {mid.get('forward_passes', 0) - before.get('forward_passes', 0):,} forward passes")

        if not total:
            print(f"errors: {errors}")
            return 1 if errors else 0
        records: list[tuple[int, int | None, float]] = []  # (applicants, status, seconds)
        next_index = iter(range(total))

        async def one_client() -> None:
            for i in next_index:  # shared: every request is sent once, by whichever client is free
                size = 1 if i % 2 == 0 else batch
                chosen = next_rows(size)
                status, seconds = await send(chosen[0] if size == 1 else chosen)
                records.append((size, status, seconds))

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        seconds = time.perf_counter() - started
        cpu2 = cpu_seconds(pid)
        after = (await client.get("/health")).json()
        while not pool.empty():
            pool.get_nowait().close()

    graded = sum(n for n, s, _ in records if s == 200)
    errors += sum(s != 200 for _, s, _ in records)
    print(f"load: {len(records):,} requests (half one applicant, half {batch}) from {clients} concurrent clients in "
          f"{seconds:.2f} s: {graded:,} applicants graded, {graded / seconds:,.0f} applicants/s, "
          f"{len(records) / seconds:.1f} requests/s" + (f"; server CPU {cpu2 - cpu1:.1f} s" if pid else ""))
    for size, name in ((1, "one applicant"), (batch, f"{batch} applicants")):
        latency = np.array([t for n, _, t in records if n == size]) * 1000
        if len(latency):
            p50, p99 = np.percentile(latency, [50, 99])
            print(f"  {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    latency = np.array([t for _, _, t in records]) * 1000
    p50, p99 = np.percentile(latency, [50, 99])
    print(f"  every request: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    batches = after.get("batches", 0) - mid.get("batches", 0)
    passes = after.get("forward_passes", 0) - mid.get("forward_passes", 0)
    print(f"server: {batches:,} batched calls ({graded / max(batches, 1):.1f} applicants a call), {passes:,} forward "
          f"passes; applicants sent in all: {taken[0]:,} of the file's {len(rows):,} rows")
    print(f"errors: {errors}")
    return 1 if errors else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running `korllama serve` (loopback only)")
    parser.add_argument("--token", default=os.environ.get("KORLLAMA_TOKEN"), help="bearer token (default: "
                                                                                  "$KORLLAMA_TOKEN)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--applicants", type=Path, help="a CSV of real rows: measure the service's cost with them "
                                                        "(idle latency, then half single, half batched requests)")
    parser.add_argument("--batch", type=int, default=64, help="applicants in each batched request (--applicants)")
    parser.add_argument("--idle", type=int, default=200, help="single requests sent one at a time first "
                                                              "(--applicants)")
    parser.add_argument("--pid", type=int, help="the server's process id: its CPU seconds are reported")
    parser.add_argument("--client", choices=["httpx", "raw"], default="httpx",
                        help="(--applicants) raw: bare HTTP/1.1 keep-alive connections, less of the CPU than httpx")
    args = parser.parse_args()
    if not is_loopback(args.url):
        parser.error(f"{args.url} is not a loopback address: this load test only targets 127.0.0.1/localhost/::1")
    if args.requests < (0 if args.applicants else 1) or args.clients < 1:
        parser.error("--requests and --clients must be at least 1 (--requests 0 with --applicants: idle only)")
    if args.applicants is not None:
        sys.exit(asyncio.run(cost(args.url.rstrip("/"), args.token, args.applicants, args.requests, args.clients,
                                  args.batch, args.idle, args.timeout, args.pid, args.client == "raw")))
    sys.exit(asyncio.run(run(args.url.rstrip("/"), args.token, args.requests, args.clients, args.timeout)))


if __name__ == "__main__":
    main()
