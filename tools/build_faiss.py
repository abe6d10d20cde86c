#!/usr/bin/env python3
"""Builds FAISS for this CPU from Debian's source package, once per machine, and prints its prefix.

    tools/build_faiss.py              # prints e.g. ~/.cache/dpsr-tf/faiss-1.7.3-2-avx2-<hash>
    tools/build_faiss.py --print-only # the prefix it would use; builds nothing (exit 1 if absent)

setup.py runs it (so `make build` and `make test` need no manual step) and links the op library
(dpsr_tf/_dpsr_ops) against the static library it leaves under <prefix>/lib.

Why: Debian's binary libfaiss-dev is built for the generic x86-64 baseline (no AVX2), which
makes fast-scan (`...x4fs`) indexes 7-19x slower than in the faiss-cpu wheel. Debian's *source*
package of the same upstream version as the wheel pinned in requirements.txt is built here with
`FAISS_OPT_LEVEL=avx2` (FAISS 1.7.3 knows only "generic" and "avx2"; AVX-512 arrived in 1.7.4),
so index files stay interchangeable with the wheel. A CPU without AVX2 (or FMA/F16C/POPCNT, which
FAISS's avx2 target also requires) gets the generic build, said in one line.

Steps (messages on stderr, the prefix alone on stdout):
  1. The version: `faiss-cpu==X.Y.Z` in requirements.txt; Debian's source version X.Y.Z-N from
     `apt-cache showsrc faiss`. When apt knows no faiss source, a deb-src entry for the Debian
     archive already configured for binaries is added (/etc/apt/sources.list.d/dpsr-deb-src.*)
     and `apt-get update` runs. Nothing is downloaded from anywhere but that archive.
  2. The cache directory, outside the clone like the venv (DPSR_CACHE_ROOT, default
     ~/.cache/dpsr-tf): faiss-<debian version>-<opt level>-<hash of cmake flags, compiler,
     cmake>. A complete one (marker file .dpsr-complete) is reused at once.
  3. Under a lock (parallel builds wait), `apt-get source faiss=<version>` (Debian's patches
     applied) and cmake: static, position-independent, Release, no GPU/Python/C API/tests,
     OpenBLAS; only the one library target is compiled.
  4. Headers and library are staged in a temporary directory beside the cache directory and
     renamed into place only when complete, so an interrupted build is never reused (its
     leftovers are removed by the next run).

Environment: DPSR_FAISS_OPT_LEVEL=generic|avx2 overrides the CPU check; DPSR_CACHE_ROOT moves
the cache; DPSR_FAISS_JOBS sets the compile parallelism (default: all cores).
"""
import datetime
import fcntl
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT_LEVELS = ("generic", "avx2")
# The instruction sets FAISS 1.7.3 compiles its avx2 target with (faiss/CMakeLists.txt:
# -mavx2 -mfma -mf16c -mpopcnt). The op library is compiled with the same flags.
AVX2_CPU_FLAGS = ("avx2", "fma", "f16c", "popcnt")
AVX2_COMPILE_FLAGS = ("-mavx2", "-mfma", "-mf16c", "-mpopcnt")
CMAKE = "/usr/bin/cmake"  # Debian's cmake (tools/apt-packages.txt), not a pip/pyenv shim
DEB_SRC_NAME = "dpsr-deb-src"
MARKER = ".dpsr-complete"


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


def log(msg):
    print(f"[build_faiss] {msg}", file=sys.stderr, flush=True)


def pinned_version(requirements=os.path.join(ROOT, "requirements.txt")):
    """The upstream FAISS version pinned for the wheel (`faiss-cpu==X.Y.Z`)."""
    with open(requirements) as f:
        for lineno, line in enumerate(f, 1):
            m = re.match(r"\s*faiss-cpu\s*==\s*([0-9][0-9.]*)\s*(#.*)?$", line)
            if m:
                return m.group(1)
    raise BuildError(f"{requirements}: no 'faiss-cpu==X.Y.Z' line; the op's FAISS must match the "
                     "wheel's version, so pin the wheel there")


def cpu_flags(path="/proc/cpuinfo"):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_opt_level():
    """(opt level, reason) for this machine; DPSR_FAISS_OPT_LEVEL overrides."""
    forced = os.environ.get("DPSR_FAISS_OPT_LEVEL")
    if forced:
        if forced not in OPT_LEVELS:
            raise BuildError(f"DPSR_FAISS_OPT_LEVEL={forced!r}: FAISS 1.7.3 knows only "
                             f"{' and '.join(OPT_LEVELS)}; unset it to pick by CPU")
        return forced, "DPSR_FAISS_OPT_LEVEL"
    missing = [f for f in AVX2_CPU_FLAGS if f not in cpu_flags()]
    if missing:
        return "generic", f"this CPU lacks {', '.join(missing)}"
    return "avx2", "this CPU has " + ", ".join(AVX2_CPU_FLAGS)


def cmake_args(opt_level):
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DFAISS_OPT_LEVEL={opt_level}",
        "-DFAISS_ENABLE_GPU=OFF",
        "-DFAISS_ENABLE_PYTHON=OFF",
        "-DFAISS_ENABLE_C_API=OFF",
        "-DBUILD_TESTING=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
        "-DBLA_VENDOR=OpenBLAS",
    ]


def library_name(opt_level):
    """FAISS 1.7.3 names its avx2 target faiss_avx2 (libfaiss_avx2.a), the generic one faiss."""
    return "libfaiss_avx2.a" if opt_level == "avx2" else "libfaiss.a"


def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "absent"
    return out.splitlines()[0] if out else "absent"


def _cache_root():
    return os.environ.get("DPSR_CACHE_ROOT") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "dpsr-tf")


def _source_versions():
    """Debian source versions of faiss apt knows (empty when there is no deb-src entry)."""
    proc = subprocess.run(["apt-cache", "showsrc", "faiss"], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return re.findall(r"^Version:\s*(\S+)", proc.stdout, re.M)


def _root_cmd():
    return [] if os.geteuid() == 0 else ["sudo"]


def debian_archive(etc="/etc/apt"):
    """The configured Debian archive for binaries, as ("deb822", uris, suite, components,
    signed_by) or ("list", options, uri, suite, components); None when there is none."""
    stanzas = []
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        if os.path.basename(path).startswith(DEB_SRC_NAME):
            continue
        with open(path) as f:
            for block in re.split(r"\n\s*\n", f.read()):
                fields = {}
                for line in block.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split():
                    stanzas.append((fields.get("uris", ""), fields.get("suites", "").split(),
                                    fields.get("components", ""), fields.get("signed-by", "")))
    one_line = []
    for path in [os.path.join(etc, "sources.list")] + sorted(
            glob.glob(os.path.join(etc, "sources.list.d", "*.list"))):
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)", line)
                if m:
                    one_line.append(((m.group(1) or "").strip(), m.group(2), m.group(3),
                                     m.group(4).strip()))
    # The main archive: a debian URI whose suite is a release, not -security/-updates.
    for uris, suites, comps, signed in stanzas:
        if "debian-security" in uris or "/debian" not in uris:
            continue
        for suite in suites:
            if "-" not in suite:
                return ("deb822", uris, suite, comps, signed)
    for opts, uri, suite, comps in one_line:
        if uri.rstrip("/").endswith("/debian") and "-" not in suite:
            return ("list", opts, uri, suite, comps)
    return None


def deb_src_entry(archive, etc="/etc/apt"):
    """(path, text) of the deb-src entry that mirrors `archive` (debian_archive's result)."""
    if archive[0] == "deb822":
        _, uris, suite, comps, signed = archive
        text = f"Types: deb-src\nURIs: {uris}\nSuites: {suite}\nComponents: {comps}\n"
        if signed:
            text += f"Signed-By: {signed}\n"
        return os.path.join(etc, "sources.list.d", f"{DEB_SRC_NAME}.sources"), text
    _, opts, uri, suite, comps = archive
    return (os.path.join(etc, "sources.list.d", f"{DEB_SRC_NAME}.list"),
            f"deb-src {opts + ' ' if opts else ''}{uri} {suite} {comps}\n")


def ensure_deb_src():
    """Adds a deb-src entry for the configured Debian archive when apt knows no faiss source."""
    if _source_versions():
        return
    archive = debian_archive()
    if archive is None:
        raise BuildError("apt knows no faiss source package and no Debian archive (a 'deb' entry "
                         "with a .../debian URI) is configured in /etc/apt/sources.list or "
                         "/etc/apt/sources.list.d; add a deb-src line for your Debian mirror")
    path, text = deb_src_entry(archive)
    log(f"adding a deb-src entry for the configured Debian archive: {path}")
    subprocess.run(_root_cmd() + ["tee", path], input=text, text=True, check=True,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.run(_root_cmd() + ["apt-get", "update", "-qq"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise BuildError(f"apt-get update failed after adding {path}:\n{proc.stderr.strip()}")
    if not _source_versions():
        raise BuildError(f"apt still knows no faiss source package after adding {path}; check "
                         "that the archive serves source indexes (apt-cache showsrc faiss)")


def debian_version(upstream):
    """The newest Debian source version of faiss for this upstream version (e.g. 1.7.3-2)."""
    versions = [v for v in _source_versions() if v.split(":")[-1].startswith(upstream + "-")]
    if not versions:
        raise BuildError(f"the configured Debian archive has no faiss source for upstream "
                         f"{upstream} (found: {', '.join(_source_versions()) or 'none'}); the op "
                         "must use the wheel's FAISS version (requirements.txt faiss-cpu)")
    best = versions[0]
    for v in versions[1:]:
        if subprocess.run(["dpkg", "--compare-versions", v, "gt", best]).returncode == 0:
            best = v
    return best


def cache_key(debver, opt_level):
    key = json.dumps({"cmake_args": cmake_args(opt_level), "cxx": _first_line(["c++", "--version"]),
                      "cmake": _first_line([CMAKE, "--version"]), "version": debver},
                     sort_keys=True)
    return f"faiss-{debver.split(':')[-1]}-{opt_level}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _run_logged(cmd, logf, cwd, what, progress=False):
    """Runs cmd with its output appended to logf; on failure raises with the log's tail."""
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    last = -10
    for line in proc.stdout:
        logf.write(line)
        m = re.match(r"\s*\[\s*(\d+)%\]", line) if progress else None
        if m and int(m.group(1)) >= last + 10:
            last = int(m.group(1))
            log(f"  {what}: {last}%")
    rc = proc.wait()
    logf.flush()
    if rc != 0:
        with open(logf.name) as f:
            tail = "".join(f.readlines()[-40:])
        raise BuildError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n--- last lines of "
                         f"{logf.name} ---\n{tail}")


def build(prefix, debver, opt_level, upstream):
    parent = os.path.dirname(prefix)
    work = tempfile.mkdtemp(prefix=".faiss-build-", dir=parent)
    log_path = os.path.join(work, "build.log")
    start = time.time()
    jobs = os.environ.get("DPSR_FAISS_JOBS") or str(os.cpu_count() or 1)
    target = "faiss_avx2" if opt_level == "avx2" else "faiss"
    with open(log_path, "w") as logf:
        src_parent = os.path.join(work, "src")
        os.makedirs(src_parent)
        log(f"apt-get source faiss={debver} (Debian's source package and patches)")
        _run_logged(["apt-get", "source", "-qq", f"faiss={debver}"], logf, src_parent,
                    "apt-get source")
        src = os.path.join(src_parent, f"faiss-{upstream}")
        if not os.path.isfile(os.path.join(src, "CMakeLists.txt")):
            raise BuildError(f"apt-get source left no {src}/CMakeLists.txt; see {log_path}")
        bdir = os.path.join(work, "build")
        log(f"cmake {' '.join(cmake_args(opt_level))}")
        _run_logged([CMAKE, "-S", src, "-B", bdir] + cmake_args(opt_level), logf, work,
                    "cmake configure")
        log(f"compiling target {target} with {jobs} jobs (a few minutes on 2 cores)")
        _run_logged([CMAKE, "--build", bdir, "--target", target, "-j", jobs], logf, work,
                    f"compile {target}", progress=True)
        built = glob.glob(os.path.join(bdir, "faiss", library_name(opt_level)))
        if not built:
            raise BuildError(f"the build finished but left no faiss/{library_name(opt_level)} "
                             f"under {bdir}; see {log_path}")
        out = os.path.join(work, "out")
        os.makedirs(os.path.join(out, "lib"))
        shutil.copy2(built[0], os.path.join(out, "lib", library_name(opt_level)))
        src_faiss = os.path.join(src, "faiss")
        for dirpath, _, files in os.walk(src_faiss):
            for name in files:
                if name.endswith((".h", ".cuh")):
                    dst = os.path.join(out, "include", "faiss",
                                       os.path.relpath(os.path.join(dirpath, name), src_faiss))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copy2(os.path.join(dirpath, name), dst)
        seconds = time.time() - start
        info = {
            "faiss_version": upstream,
            "debian_source_version": debver,
            "opt_level": opt_level,
            "library": f"lib/{library_name(opt_level)}",
            "compile_flags": list(AVX2_COMPILE_FLAGS) if opt_level == "avx2" else [],
            "cmake_args": cmake_args(opt_level),
            "cxx": _first_line(["c++", "--version"]),
            "cmake": _first_line([CMAKE, "--version"]),
            "jobs": int(jobs),
            "build_seconds": round(seconds, 1),
            # CPU of the compilers: on a busy machine the wall time above says little.
            "build_cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]), 1),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(os.path.join(out, "buildinfo.json"), "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        shutil.copy2(log_path, os.path.join(out, "build.log"))
        open(os.path.join(out, MARKER), "w").close()
    os.rename(out, prefix)  # atomic: the prefix appears only complete
    shutil.rmtree(work, ignore_errors=True)
    log(f"built FAISS {debver} ({opt_level}) in {seconds:.0f} s: {prefix}")


def main(argv):
    print_only = "--print-only" in argv[1:]
    unknown = [a for a in argv[1:] if a != "--print-only"]
    if unknown:
        raise BuildError(f"unknown arguments {unknown}; usage: tools/build_faiss.py [--print-only]")
    upstream = pinned_version()
    opt_level, reason = choose_opt_level()
    root = _cache_root()
    os.makedirs(root, exist_ok=True)
    # Fast path: a complete build for this version and level, keyed without asking apt.
    existing = sorted(glob.glob(os.path.join(root, f"faiss-{upstream}-*-{opt_level}-*")))
    for prefix in existing:
        debver = os.path.basename(prefix)[len("faiss-"):].rsplit(f"-{opt_level}-", 1)[0]
        if os.path.exists(os.path.join(prefix, MARKER)) and prefix.endswith(
                cache_key(debver, opt_level)):
            return _done(prefix, opt_level, reason)
    if print_only:
        raise BuildError(f"no complete FAISS {upstream} ({opt_level}) build under {root}; run "
                         "tools/build_faiss.py")
    with open(os.path.join(root, f".lock-faiss-{upstream}"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_deb_src()
        debver = debian_version(upstream)
        prefix = os.path.join(root, cache_key(debver, opt_level))
        if not os.path.exists(os.path.join(prefix, MARKER)):
            for stale in glob.glob(os.path.join(root, ".faiss-build-*")):
                log(f"removing an interrupted build: {stale}")
                shutil.rmtree(stale, ignore_errors=True)
            if os.path.exists(prefix):
                shutil.rmtree(prefix)
            log(f"building FAISS {debver} at FAISS_OPT_LEVEL={opt_level} ({reason}); once per "
                f"machine, cached in {prefix}")
            build(prefix, debver, opt_level, upstream)
    return _done(prefix, opt_level, reason)


def _done(prefix, opt_level, reason):
    if opt_level == "generic":
        log(f"FAISS for the op is the GENERIC build ({reason}): fast-scan indexes search several "
            "times slower than on an AVX2 machine")
    print(prefix)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BuildError as e:
        log(f"error: {e}")
        sys.exit(1)
