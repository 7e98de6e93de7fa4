"""Build the serving image: the bento (``bentoml build``) and its container (``bentoml containerize``).

Usage (after ``make run`` or ``pbf package``, with the same ``BENTOML_HOME``)::

    make container                      # BENTOML_HOME=.pbf/bentoml
    .venv/bin/python scripts/containerize.py --tag pbf_defect_segmenter:mine --base local

Prints the image tags last. ``mlflow`` and ``worker`` as arguments also build the compose stack's
images (``pbf-mlflow:latest``, ``pbf-worker:latest``; the worker's CPU torch comes from
download.pytorch.org, so it needs that index). Run the image on loopback with
``docker run --rm --network host IMAGE serve --host 127.0.0.1 --port 3000``.

The base image: the bentofile's ``python:3.11-slim`` where a registry is reachable (``--base
registry``); otherwise (``--base local``; ``auto``, the default, picks) a Debian bookworm image
made here with ``mmdebstrap`` (minbase, python3, venv, pip, this machine's CA bundle) and imported
as ``pbf-local/debian-python:3.11``; it is made once and reused (``--rebuild-base`` to remake it).
Python packages come pinned from ``docker/bento-requirements.lock``; the build reaches the package
index (PyPI) over the host network (``--network``). Needs a Docker engine and Docker's client
(Debian's ``docker.io``); a client that wants buildx but lacks it is passed over for Debian's
``/usr/bin/docker`` (which builds with BuildKit itself). ``DOCKER`` names another client,
``DOCKER_HOST`` another engine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BENTOFILE = REPO / "bentofile.yaml"
REGISTRY_BASE = "python:3.11-slim"  # what BentoML's bentofile (debian, Python 3.11) starts from
LOCAL_BASE = "pbf-local/debian-python:3.11"
DEBIAN_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
# the compose stack's other images: (Dockerfile, build context), as docker/compose.yaml has them
COMPOSE_IMAGES = {
    "mlflow": ("docker/mlflow.Dockerfile", REPO / "docker"),
    "worker": ("docker/worker.Dockerfile", REPO),
}
# pip may install into Debian's system Python (BentoML installs uv with it); uv trusts the bundle
BASE_ENV = (
    "PIP_BREAK_SYSTEM_PACKAGES=1",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    "UV_NATIVE_TLS=1",
)


class ContainerError(Exception):
    """A step of the image build failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"[containerize] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], what: str, env: dict | None = None, quiet: bool = False) -> str:
    """Run ``cmd``; its output streams to stderr unless ``quiet``; raise naming ``what``."""
    out = subprocess.PIPE if quiet else sys.stderr
    done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        detail = f": {done.stdout.strip()[-2000:]}" if done.stdout else ""
        command = " ".join(Path(cmd[0]).name if k == 0 else c for k, c in enumerate(cmd[:3]))
        raise ContainerError(f"{what} failed (exit {done.returncode}, `{command} …`){detail}")
    return done.stdout or ""


def works(cmd: list[str], env: dict | None = None) -> bool:
    return subprocess.run(cmd, env=env, capture_output=True).returncode == 0


def find_docker() -> str:
    """The Docker client to use: ``$DOCKER``, else one that has buildx, else Debian's."""
    if named := os.environ.get("DOCKER"):
        return named
    found = [p for p in (shutil.which("docker"), "/usr/bin/docker") if p and Path(p).exists()]
    if not found:
        raise ContainerError("no docker client found: install Debian's docker.io (or set DOCKER)")
    with_buildx = [p for p in found if works([p, "buildx", "version"])]
    return (with_buildx or [found[-1]])[0]


def check_engine(docker: str) -> str:
    """The engine's version; an error naming ``DOCKER_HOST`` when no engine answers."""
    done = subprocess.run(
        [docker, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    )
    if done.returncode:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ContainerError(
            f"no Docker engine answers at {host}: start one (as root: "
            "`dockerd --bridge=none --iptables=false &`) or set DOCKER_HOST"
        )
    return done.stdout.strip()


def choose_base(docker: str, mode: str) -> str:
    """``registry`` or ``local``: ``auto`` takes the registry image if it is here or can be pulled."""
    if mode != "auto":
        return mode
    if works([docker, "image", "inspect", REGISTRY_BASE]) or works([docker, "pull", REGISTRY_BASE]):
        return "registry"
    say(
        f"{REGISTRY_BASE} cannot be pulled (no registry reachable): using a local Debian base image"
    )
    return "local"


def make_local_base(docker: str, rebuild: bool) -> None:
    """Make ``LOCAL_BASE`` with mmdebstrap and ``docker import`` it, unless it is already there."""
    if not rebuild and works([docker, "image", "inspect", LOCAL_BASE]):
        say(f"base image {LOCAL_BASE}: already made (--rebuild-base remakes it)")
        return
    if not shutil.which("mmdebstrap"):
        raise ContainerError(
            "no registry base image and no mmdebstrap to make a local one: install Debian's "
            "mmdebstrap, or make a registry reachable and use --base registry"
        )
    say(f"making base image {LOCAL_BASE} with mmdebstrap (Debian bookworm minbase, ~1 min)")
    with tempfile.TemporaryDirectory(prefix="pbf-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        cmd = ["mmdebstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "--quiet"]
        cmd += [f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("doc", "man", "locale")]
        if CA_BUNDLE.is_file():  # the host's trust store: the package index may sit behind its CA
            cmd.append(f"--customize-hook=upload {CA_BUNDLE} /etc/ssl/certs/ca-certificates.crt")
        cmd += ['--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*']
        run([*cmd, "bookworm", str(tar)], "mmdebstrap of the base image")
        changes = [x for env in BASE_ENV for x in ("--change", f"ENV {env}")]
        changes += ["--change", 'CMD ["python3"]']
        run([docker, "import", *changes, str(tar), LOCAL_BASE], "docker import", quiet=True)


def build_bento(base: str, env: dict) -> str:
    """``bentoml build`` of the repository; with the local base, from a copy of the bentofile
    that names it. Returns the bento's tag."""
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    with tempfile.TemporaryDirectory(prefix="pbf-bentofile-") as tmp:
        bentofile = BENTOFILE
        if base == "local":
            config = yaml.safe_load(BENTOFILE.read_text())
            config["docker"] = {"base_image": LOCAL_BASE}
            bentofile = Path(tmp) / "bentofile.yaml"
            bentofile.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [bentoml, "build", "-f", str(bentofile), "--output", "tag", str(REPO)]
        out = run(cmd, "bentoml build", env=env, quiet=True)
    tags = [line for line in out.splitlines() if line.startswith("__tag__:")]
    if not tags:
        raise ContainerError(f"bentoml build printed no tag: {out.strip()[-500:]}")
    return tags[-1].removeprefix("__tag__:").strip()


def containerize(docker: str, bento: str, tags: list[str], network: str, env: dict) -> None:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    cmd = [bentoml, "containerize", bento, "--backend", "docker", "--opt", f"network={network}"]
    for tag in tags:
        cmd += ["--image-tag", tag]
    env = {**env, "PATH": f"{Path(docker).parent}{os.pathsep}{env.get('PATH', '')}"}
    run(cmd, "bentoml containerize", env=env)


def build_compose_image(docker: str, name: str, tag: str, base: str, network: str) -> None:
    """``docker build`` of the compose stack's ``mlflow`` or ``worker`` image, on the local base
    image where there is no registry."""
    dockerfile, context = COMPOSE_IMAGES[name]
    cmd = [docker, "build", "--network", network, "-f", str(REPO / dockerfile), "-t", tag]
    if base == "local":
        cmd += ["--build-arg", f"BASE_IMAGE={LOCAL_BASE}"]
    run([*cmd, str(context)], f"docker build of the {name} image")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="bento (the default), mlflow, worker: the last two are the compose stack's images",
    )
    parser.add_argument(
        "--tag",
        action="append",
        help="the bento image's tag (repeatable); default: the bento's tag and "
        "pbf_defect_segmenter:latest",
    )
    parser.add_argument(
        "--compose-tag", default="latest", help="tag of the pbf-mlflow/pbf-worker images"
    )
    parser.add_argument(
        "--base",
        choices=("auto", "registry", "local"),
        default="auto",
        help="python:3.11-slim from a registry or the local Debian image (auto: registry if pullable)",
    )
    parser.add_argument("--rebuild-base", action="store_true", help="remake the local base image")
    parser.add_argument("--network", default="host", help="docker build network (default: host)")
    args = parser.parse_args(argv)
    args.images = args.images or ["bento"]
    if unknown := [i for i in args.images if i != "bento" and i not in COMPOSE_IMAGES]:
        parser.error(f"unknown image {', '.join(unknown)}: choose bento, mlflow or worker")
    return args


def build(args: argparse.Namespace, env: dict) -> list[str]:
    """Every image ``args`` asks for; their tags."""
    docker = find_docker()
    say(f"docker client {docker}, engine {check_engine(docker)}")
    base = choose_base(docker, args.base)
    if base == "local":
        make_local_base(docker, args.rebuild_base)
    built: list[str] = []
    for name in dict.fromkeys(args.images):
        if name == "bento":
            say(f"bentoml build (BENTOML_HOME={env.get('BENTOML_HOME', '~/bentoml')})")
            bento = build_bento(base, env)
            tags = args.tag or [bento, f"{bento.split(':')[0]}:latest"]
            say(f"bentoml containerize {bento} → {', '.join(tags)} (installs the pinned packages)")
            containerize(docker, bento, tags, args.network, env)
        else:
            tags = [f"pbf-{name}:{args.compose_tag}"]
            say(f"docker build {tags[0]}")
            build_compose_image(docker, name, tags[0], base, args.network)
        built += tags
    return built


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    try:
        tags = build(args, env)
    except ContainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    say(
        "done; run the bento on loopback: docker run --rm --network host IMAGE serve --host 127.0.0.1"
    )
    print("\n".join(tags))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
