"""``tsfm-backend fetch ID``: download an official model from the catalog and import it."""

from __future__ import annotations

import argparse

HELP = "download an official model listed by `tsfm-backend models` (resumable, hash-checked) and import it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_id", metavar="ID", help="catalog id, e.g. stunet-totalseg-base")
    parser.add_argument("--accept-license", action="store_true",
                        help="accept the license of weights that may not be redistributed")
    parser.add_argument("--force", action="store_true", help="replace an installed model with the same id")


def run(args: argparse.Namespace) -> int:
    from tsfm_backend.catalog import catalog_entry
    from tsfm_backend.catalog_install import LicenseNotAccepted, check_license, install_entry
    from tsfm_backend.cli import CommandError
    from tsfm_backend.commands.import_model import describe

    entry = catalog_entry(args.model_id)
    try:
        check_license(entry, args.accept_license, "run again with --accept-license")
    except LicenseNotAccepted as error:
        raise CommandError(str(error)) from None
    if not entry.downloadable:
        raise CommandError(f"{entry.id} has no direct download. {entry.notes}")
    card, installed, fmt = install_entry(entry, accept_license=args.accept_license, overwrite=args.force)
    print(f"fetched {entry.id!r} into {installed}")
    unchecked = [f.name for f in entry.files if f.sha256 is None]
    if unchecked:
        print(f"  not hash-checked (the catalog has no published SHA-256): {', '.join(unchecked)}")
    for line in describe(card, fmt):
        print("  " + line)
    return 0
