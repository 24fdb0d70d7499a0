"""The soak: the real daemon on real tiers, with readers, churn, crashes and junk together.

``scripts/soak [--minutes N]`` runs it. See docs/reliability.md for what it shows and what
it does not. The last line of its output is a JSON summary; it exits 1 when a byte was
wrong, a reader failed for no outage, fsck found a problem, junk input was mishandled, or
no kill -9 and restart happened.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.fuse.crashutil import restart
from tests.fuse.mounting import Mount
from tests.soak import junk
from tests.soak.reader import in_outage
from tests.soak.world import World, hash_uncached
from tierfs.errors import ControlError
from tierfs.states import JobState

log = logging.getLogger("soak")
REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS: tuple[str, ...] = ("bytes_verified", "mismatches", "reader_errors", "kills")
SUMMARY_KEYS += ("restarts", "fsck_problems", "bad_inputs", "minutes")


class Soak:
    def __init__(self, world: World, args: argparse.Namespace) -> None:
        self.world = world
        self.args = args
        self.rng = random.Random(args.seed)
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Held by the churn and junk threads for each operation; the soak takes them to
        # get a quiet mount (fsck after a restart, the cold store hidden).
        self.churn_lock = threading.Lock()
        self.junk_lock = threading.Lock()
        self.outages = {"down": False, "down_gen": 0, "hidden": False, "hidden_gen": 0}
        self.mount: Mount | None = None
        self.readers: dict[int, subprocess.Popen[bytes]] = {}
        self.reader_seq = 0

    # Bookkeeping ---------------------------------------------------------------------

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def fail(self, key: str, message: str) -> None:
        with self.lock:
            self.counts[key] += 1
            self.failures.append(message)
        log.error("%s: %s", key, message)

    def set_outage(self, kind: str, on: bool) -> None:
        with self.lock:
            self.outages[kind] = on
            self.outages[f"{kind}_gen"] += 1
            self.world.write_outages(self.outages)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.outages)

    # Readers ---------------------------------------------------------------------------

    def spawn_reader(self) -> None:
        self.reader_seq += 1
        seed = self.args.seed * 1000 + self.reader_seq
        self.readers[seed] = subprocess.Popen(
            [sys.executable, "-m", "tests.soak.reader", str(seed), str(self.world.base)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )

    def watch_readers(self) -> None:
        """Respawn a reader that died; a SIGBUS under an outage is expected, nothing else."""
        while not self.stop.is_set():
            for seed, proc in list(self.readers.items()):
                code = proc.poll()
                if code is None or code == 0:
                    continue
                del self.readers[seed]
                op_file = self.world.base / "readers" / f"{seed}.op"
                try:
                    began = json.loads(op_file.read_text())
                except (OSError, ValueError):
                    began = self.snapshot()
                if code == -7 and in_outage(began, self.snapshot()):
                    self.add("outages")
                    self.add("sigbus_in_outage")
                else:
                    self.fail("reader_errors", f"reader {seed} died with {code}")
                self.spawn_reader()
            time.sleep(0.2)

    # Churn: promote, demote, pin, unpin, and a tier filled to ENOSPC -------------------------

    def churn(self) -> None:
        models = self.world.models()
        pinned: set[str] = set()
        with self.world.client(timeout=60) as client:
            while not self.stop.is_set():
                time.sleep(self.rng.random() * 0.3)
                with self.churn_lock:
                    before = self.snapshot()
                    op = self.rng.choices(
                        ["promote", "demote", "pin", "unpin", "enospc"], [6, 4, 1, 2, 1]
                    )[0]
                    model = self.rng.choice(models)
                    if op == "pin" and pinned:
                        op, model = "unpin", next(iter(pinned))
                    try:
                        if op == "promote":
                            client.promote(model, self.rng.choice([None, "ram0", "ram1"]))
                        elif op == "demote":
                            client.demote(model)
                        elif op == "pin":
                            client.pin(model, None)
                            pinned.add(model)
                        elif op == "unpin":
                            client.unpin(model)
                            pinned.discard(model)
                        else:
                            self.fill_tier(client, model)
                        self.add(op)
                    except ControlError as exc:
                        self.control_error(op, model, exc, before)

    def control_error(self, op: str, model: str, exc: ControlError, before: dict[str, Any]) -> None:
        if exc.errno in (errno.ENOSPC, errno.EBUSY) or "does not fit" in str(exc):
            self.add("no_room")
        elif in_outage(before, self.snapshot()):
            self.add("control_outages")
        else:
            self.fail("churn_errors", f"{op} {model}: {exc}")

    def fill_tier(self, client: Any, model: str) -> None:
        """Fill ram1 to ENOSPC behind tierfs's back, then promote onto it."""
        ballast = self.world.ballast
        try:
            with open(ballast, "wb") as f:
                block = b"\0" * (1 << 20)
                while True:
                    f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        try:
            job = client.promote(model, "ram1")
            deadline = time.monotonic() + 30
            while JobState(job["state"]).active and time.monotonic() < deadline:
                time.sleep(0.05)
                job = client.job(job["id"])
            self.add(f"enospc_job_{job['state']}")
            if job["state"] == "failed":
                self.add("enospc_failed_jobs")
                if "No space" not in str(job["error"]) and "does not fit" not in str(job["error"]):
                    self.fail("churn_errors", f"promotion onto a full tier: {job['error']}")
        finally:
            ballast.unlink(missing_ok=True)

    # Junk ------------------------------------------------------------------------------

    def junk(self) -> None:
        targets = [
            junk.HttpTarget.unix(
                "control", self.world.base / "state" / "control.sock", self.world.models()
            )
        ]
        if self.args.web:
            token_file = (
                Path(self.args.web_token_file)
                if self.args.web_token_file
                else self.world.base / "state" / "web.token"
            )
            token = token_file.read_text().strip()
            targets.append(junk.HttpTarget.tcp("web", self.args.web, token, self.world.models()))
        valid = self.world.base.joinpath("config.toml").read_text()
        while not self.stop.wait(self.rng.uniform(3, 8)):
            with self.junk_lock:
                before = self.snapshot()
                for target in targets:
                    try:
                        sent, failures = junk.http_round(target, examples=15)
                    except Exception as exc:
                        sent, failures = 0, [f"{target.name}: {exc!r}"]
                    if failures and in_outage(before, self.snapshot()):
                        self.add("junk_outages")
                        continue
                    self.add("bad_inputs", sent)
                    for failure in failures:
                        self.fail("bad_input_failures", failure)
                sent, failures = junk.config_round(valid, examples=2)
                self.add("bad_inputs", sent)
                for failure in failures:
                    self.fail("bad_input_failures", failure)

    # Crashes and the hidden cold store ---------------------------------------------------

    def kill_and_restart(self) -> None:
        assert self.mount is not None
        self.set_outage("down", True)
        time.sleep(self.rng.uniform(0, 0.3))
        self.mount.kill()
        self.add("kills")
        log.info("kill -9 #%d", self.counts["kills"])
        time.sleep(self.rng.uniform(0.2, 2.0))
        restart(self.mount, timeout=60)
        self.add("restarts")
        self.set_outage("down", False)
        with self.churn_lock, self.junk_lock:
            self.fsck()

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.world.client() as client:
            while any(JobState(j["state"]).active for j in client.status()["jobs"]):
                if time.monotonic() > deadline:
                    self.fail("hangs", "jobs still running after a minute of quiet")
                    return
                time.sleep(0.1)

    def fsck(self) -> None:
        self.wait_idle()
        with self.world.client(timeout=600) as client:
            report = client.fsck(False)
        self.add("fscks")
        for finding in report["findings"]:
            self.fail("fsck_problems", f"fsck: {finding}")

    def hide_cold(self) -> None:
        """Pin one model hot, hide the cold store, check hot reads go on and cold ones fail."""
        hot, cold = self.rng.sample(["lone/m0.gguf", "lone/m1.gguf", "lone/m2.gguf"], 2)
        with self.churn_lock, self.junk_lock, self.world.client(timeout=60) as client:
            self.wait_idle()
            client.demote(cold)
            job = client.pin(hot, "ram0")
            deadline = time.monotonic() + 60
            while JobState(job["state"]).active and time.monotonic() < deadline:
                time.sleep(0.05)
                job = client.job(job["id"])
            if job["state"] != "done":
                log.warning("could not make %s hot (%s); skipping the hidden store", hot, job)
                client.unpin(hot)
                return
            self.set_outage("hidden", True)
            self.world.hide_cold()
            self.add("cold_hidden")
            try:
                self.read_while_hidden(hot, cold)
            finally:
                self.world.show_cold()
                self.set_outage("hidden", False)
                client.unpin(hot)

    def read_while_hidden(self, hot: str, cold: str) -> None:
        mnt = self.world.base / "mnt"
        expected = json.loads(self.world.manifest_path.read_text())
        deadline = time.monotonic() + self.args.hidden_s
        while time.monotonic() < deadline:
            try:
                got = hash_uncached(mnt / hot)
            except OSError as exc:
                self.fail("reader_errors", f"hot {hot} with the cold store hidden: {exc!r}")
                return
            if got != expected[hot]["xxh3"]:
                self.fail("mismatches", f"hot {hot} with the cold store hidden: {got}")
            self.add("bytes_verified", expected[hot]["size"])
            self.add("hidden_hot_reads")
            try:
                got = hash_uncached(mnt / cold)
            except OSError as exc:
                self.add(f"hidden_cold_error_{errno.errorcode.get(exc.errno or 0, exc.errno)}")
            else:
                if got != expected[cold]["xxh3"]:
                    self.fail("mismatches", f"cold {cold} read wrong bytes while hidden")
                else:
                    self.add("hidden_cold_served")  # from a copy made before: still right
            time.sleep(0.2)

    def sabotage(self) -> None:
        """Flip a byte in every hot copy behind tierfs's back (--inject-corruption only)."""
        self.add("corruptions_injected", self.world.corrupt_hot_copies())

    # The run -----------------------------------------------------------------------------

    def run(self) -> None:
        world = self.world
        world.build()
        world.write_outages(self.outages)
        (world.base / "readers").mkdir()
        # --web URL: the daemon serves its web listener there, and the junk goes to it.
        listen = urlsplit(self.args.web).netloc if self.args.web else ""
        self.mount = world.mount(web_listen=listen).start()
        start = time.monotonic()
        end = start + self.args.minutes * 60
        for _ in range(self.args.readers):
            self.spawn_reader()
        threads = [
            threading.Thread(target=fn, name=fn.__name__, daemon=True)
            for fn in (self.watch_readers, self.churn, self.junk)
        ]
        for t in threads:
            t.start()
        span = end - start
        next_kill = start + self.rng.uniform(0.15, 0.3) * min(span, 60)
        next_hide = start + 0.5 * min(span, 120)
        next_report = start + 10
        next_sabotage = start + 0.3 * span if self.args.inject_corruption else end + 1
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_kill and end - now > 8:
                self.kill_and_restart()
                next_kill = time.monotonic() + self.rng.uniform(15, 40)
            elif now >= next_hide and end - now > self.args.hidden_s + 3:
                self.hide_cold()
                next_hide = time.monotonic() + self.rng.uniform(120, 200)
            if now >= next_sabotage:
                self.sabotage()
                next_sabotage = end + 1
            if now >= next_report:
                log.info("%.1f min: %s", (now - start) / 60, dict(self.counts))
                next_report = now + 30
            time.sleep(0.2)
        self.add("minutes_x100", round((time.monotonic() - start) / 60 * 100))
        (world.base / "stop").touch()
        self.stop.set()
        for t in threads:
            t.join(timeout=120)
            if t.is_alive():
                self.fail("hangs", f"the {t.name} thread did not stop")
        for proc in self.readers.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.fail("hangs", "a reader did not stop")
        self.collect_readers()
        self.final_checks()

    def collect_readers(self) -> None:
        for path in sorted((self.world.base / "readers").glob("*.json")):
            data = json.loads(path.read_text())
            for key, value in data.items():
                if key != "problems":
                    self.add(key, value)
            for problem in data["problems"]:
                self.failures.append(f"reader {path.stem}: {problem}")

    def final_checks(self) -> None:
        """Quiet again: every file reads right, fsck is clean online and offline."""
        assert self.mount is not None
        self.fsck()
        expected = json.loads(self.world.manifest_path.read_text())
        for relpath, spec in expected.items():
            got = hash_uncached(self.world.base / "mnt" / relpath)
            if got != spec["xxh3"]:
                self.fail("mismatches", f"final read of {relpath}: {got}")
            self.add("bytes_verified", spec["size"])
        code = self.mount.stop()
        if code != 0:
            self.fail("reader_errors", f"the daemon exited {code} on SIGTERM")
        result = subprocess.run(
            [sys.executable, "-m", "tierfs", "fsck", "-c", str(self.mount.config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0 or "fsck: clean" not in result.stdout:
            self.fail("fsck_problems", f"offline fsck: {result.stdout}{result.stderr}")
        daemon_log = self.mount.log_text()
        self.add("evictions", daemon_log.count(" to make room for "))
        self.add("tier_full_seen", daemon_log.count(" free on its file system"))
        tracebacks = daemon_log.count("Traceback")
        if tracebacks:
            self.fail("daemon_tracebacks", f"{tracebacks} traceback(s) in {self.mount.log}")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: self.counts[key] for key in SUMMARY_KEYS}
        out["minutes"] = self.counts["minutes_x100"] / 100
        extra = {k: v for k, v in sorted(self.counts.items()) if k not in out}
        extra.pop("minutes_x100", None)
        return out | extra

    def ok(self) -> bool:
        c = self.counts
        bad: tuple[str, ...] = ("mismatches", "reader_errors", "fsck_problems")
        bad += ("bad_input_failures", "churn_errors", "hangs", "daemon_tracebacks")
        return not any(c[k] for k in bad) and c["kills"] >= 1 and c["restarts"] >= 1
