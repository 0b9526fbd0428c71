"""The ``symbi-jupyter`` command.

Each subcommand is added by an ``_add_<name>(subparsers)`` function that registers its
parser and sets ``func``, a callable taking the parsed arguments and returning the exit
status. Exit status: 0 success, 1 the check failed, 2 usage error (``run`` adds 3,
refused, and 130, interrupted: see :mod:`.cli_run`; ``node`` and ``cluster`` add 3,
refused: see :mod:`.cluster.commands`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import __version__
from .audit import verify

if TYPE_CHECKING:
    from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _audit_verify(args: argparse.Namespace) -> int:
    report = verify(args.path)
    print(f"{args.path}: {report}")
    return EXIT_OK if report.ok else EXIT_FAILED


def _add_audit(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="inspect the hash-chained audit log")
    audit.set_defaults(func=needs_subcommand(audit))
    actions = audit.add_subparsers(title="actions", metavar="ACTION")
    check = actions.add_parser(
        "verify",
        help="check that no record was edited, deleted or reordered",
        description="Verify the hash chain of an audit log. Exit 0 if intact, 1 if not.",
    )
    check.add_argument("path", metavar="PATH", help="the audit log (JSON lines)")
    check.set_defaults(func=_audit_verify)


def _doctor(args: argparse.Namespace) -> int:
    from .setup.doctor import run_doctor

    return run_doctor(reap=args.reap)


def _add_doctor(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="show which tiers can run here and how to fix the others",
        description="For every tier: whether it can run here, and if not, what is "
        "missing and the command that fixes it.",
    )
    doctor.add_argument(
        "--reap",
        action="store_true",
        help="first remove containers and cgroups left by kernels that died",
    )
    doctor.set_defaults(func=_doctor)


def _setup(args: argparse.Namespace) -> int:
    from .setup.host import SetupError, setup

    try:
        setup(build_image=not args.no_image, tier3=not args.no_tier3, scientific=args.scientific)
    except SetupError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_setup(subparsers: argparse._SubParsersAction) -> None:
    setup = subparsers.add_parser(
        "setup",
        help="install and start what the container tiers need (root, Debian/Ubuntu)",
        description="Install docker.io, runsc and mmdebstrap, start a Docker daemon with "
        "runsc registered, and build the sandbox image; install QEMU and build the "
        "microVM artefacts (image build --tier3). Idempotent.",
    )
    setup.add_argument("--no-image", action="store_true", help="do not build the image")
    setup.add_argument(
        "--no-tier3",
        action="store_true",
        help="do not install QEMU nor build the microVM artefacts",
    )
    setup.add_argument(
        "--scientific",
        action="store_true",
        help="also build the scientific profile's image and guest (numpy, pandas, "
        "matplotlib; see image build --profile) beside the default minimal ones",
    )
    setup.set_defaults(func=_setup)


def _install_kernel(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .kernel.install import DEFAULT_NAME, TIER_KERNEL_NAMES, install, tier_kernel_name

    tiers: list[str | None] = list(args.tier or [None])
    if "all" in tiers:  # tier None only where native execution is allowed for it
        tiers = [t.value for t in TIER_KERNEL_NAMES if t.value != "None" or args.allow_native]
    try:
        if args.name and len(tiers) > 1:
            raise ConfigError("--name names one kernelspec; give it with one --tier")
        names = [args.name or (tier_kernel_name(t) if t else DEFAULT_NAME) for t in tiers]
        for name, tier in zip(names, tiers, strict=True):
            where = install(
                name, user=args.user, prefix=args.prefix, tier=tier, allow_native=args.allow_native
            )
            print(f"installed kernelspec {name} in {where}")
    except ConfigError as exc:
        print(f"install-kernel: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"install-kernel: {exc} (try --user, or --sys-prefix in a virtualenv)", file=sys.stderr
        )
        return EXIT_FAILED
    return EXIT_OK


def _add_install_kernel(subparsers: argparse._SubParsersAction) -> None:
    from .kernel.install import DEFAULT_NAME, DISPLAY_NAME

    cmd = subparsers.add_parser(
        "install-kernel",
        help=f"install the '{DISPLAY_NAME}' kernel for Jupyter",
        description="Install the symbi kernelspec: every cell of a notebook using it "
        "runs in a sandbox. Without --user/--sys-prefix/--prefix it goes to the "
        "system-wide Jupyter data directory.",
    )
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for the current user only")
    where.add_argument(
        "--sys-prefix",
        dest="prefix",
        action="store_const",
        const=sys.prefix,
        help=f"into this Python's prefix ({sys.prefix}), e.g. a virtualenv",
    )
    where.add_argument("--prefix", metavar="P", help="into the prefix P")
    cmd.add_argument(
        "--tier",
        metavar="T",
        action="append",
        help="the tier its cells run at (default: SandboxOrchestrator.default_sandbox_tier); "
        "the kernelspec is then named after it (symbi-native, symbi-docker, symbi-gvisor, "
        "symbi-microvm). Repeat for one kernelspec per tier; 'all' for Tier1 to Tier3, "
        "and tier None with --allow-native",
    )
    cmd.add_argument(
        "--allow-native",
        action="store_true",
        help="allow native execution (tier None) for this kernel: its cells then run on "
        "the host under rlimits and cgroups only",
    )
    cmd.add_argument(
        "--name",
        help=f"kernelspec name (default {DEFAULT_NAME}, or the tier's name with --tier)",
    )
    cmd.set_defaults(func=_install_kernel)


def _image_build(args: argparse.Namespace) -> int:
    from .setup.images.container import ImageError, build_image, profile_image

    if args.tier3:
        return _image_build_tier3(args)
    offline = True if args.offline else (False if args.online else None)
    try:
        tag = args.tag or profile_image(args.profile)
        how = build_image(tag, profile=args.profile, dockerfile=args.dockerfile, offline=offline)
    except ImageError as exc:
        print(f"image build: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the engine is missing or refused: say so in one line
        print(f"image build: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"built {tag} {how}")
    return EXIT_OK


def _image_build_tier3(args: argparse.Namespace) -> int:
    from .setup.images.microvm import MicroVMImageError, build_artifacts

    try:
        build_artifacts(
            args.output, profile=args.profile, kernel=args.kernel, check=not args.no_check
        )
    except MicroVMImageError as exc:
        print(f"image build --tier3: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_image(subparsers: argparse._SubParsersAction) -> None:
    from .sandboxes.microvm import default_artifacts_dir
    from .setup.images.container import DEFAULT_IMAGE, PACKAGES, PROFILES, profile_image

    image = subparsers.add_parser("image", help="the container tiers' sandbox image")
    image.set_defaults(func=needs_subcommand(image))
    actions = image.add_subparsers(title="actions", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build the sandbox image (offline with mmdebstrap, or from a Dockerfile)",
        description=f"Build the sandbox image: Debian bookworm, essential packages plus "
        f"{', '.join(PACKAGES)}. Offline (mmdebstrap + docker import) when no registry is "
        "reachable, else from the packaged Dockerfile.",
    )
    build.add_argument(
        "--profile",
        choices=PROFILES,
        default="minimal",
        help="minimal: python3's standard library only (default); scientific: plus "
        f"Debian's {', '.join(PROFILES['scientific'])}, for plots inline "
        f"(tag {profile_image('scientific')}; with --tier3, the guest goes to "
        f"{default_artifacts_dir('scientific')}). Select it per operator with "
        "DockerSandbox.image and MicroVMSandbox.artifacts_dir",
    )
    build.add_argument(
        "--tag", help=f"image tag (default {DEFAULT_IMAGE}, or the profile's tag above)"
    )
    build.add_argument("--dockerfile", type=_path, help="build from this Dockerfile instead")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="always use mmdebstrap")
    mode.add_argument("--online", action="store_true", help="always use the Dockerfile")
    _add_tier3_options(build)
    build.set_defaults(func=_image_build)


def _add_tier3_options(build: argparse.ArgumentParser) -> None:
    from .setup.images.microvm import KERNEL_CHOICES, default_artifacts_dir

    tier3 = build.add_argument_group(
        "tier3", "--tier3 builds the microVM guest instead: kernel, rootfs and manifest"
    )
    tier3.add_argument(
        "--tier3",
        action="store_true",
        help="build the microVM artefacts (offline, from Debian packages)",
    )
    tier3.add_argument(
        "--output",
        type=_path,
        metavar="DIR",
        help=f"where to put them (default {default_artifacts_dir()})",
    )
    tier3.add_argument(
        "--kernel",
        choices=KERNEL_CHOICES,
        default="source",
        help="source: build linux-source-6.1 with the packaged fragment "
        "(default, cached); debian: Debian's cloud kernel plus an initramfs",
    )
    tier3.add_argument(
        "--no-check", action="store_true", help="do not boot the result once under QEMU"
    )


def _path(value: str) -> Path:
    from pathlib import Path

    return Path(value)


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    from .cli_run import add_run

    add_run(subparsers)


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from .bench.cli import add_bench

    add_bench(subparsers)


def _add_node(subparsers: argparse._SubParsersAction) -> None:
    from .cluster.commands import add_node

    add_node(subparsers)


def _add_cluster(subparsers: argparse._SubParsersAction) -> None:
    from .cluster.commands import add_cluster

    add_cluster(subparsers)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_audit,
    _add_doctor,
    _add_setup,
    _add_image,
    _add_install_kernel,
    _add_run,
    _add_bench,
    _add_node,
    _add_cluster,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="symbi-jupyter",
        description="Run notebook code under Symbiont's security-tier model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(func=needs_subcommand(parser))
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def needs_subcommand(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """What a command of subcommands does when given none: its usage, exit 2."""

    def run(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required", file=sys.stderr)
        return EXIT_USAGE

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help/--version (0) and on usage errors (2); return instead,
        # so main() can be called from Python.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except BrokenPipeError:
        # `symbi-jupyter doctor | head`: the reader left; that is not an error of ours.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
