"""``tsfm-backend models``: the installed models and the official ones the catalog knows."""

from __future__ import annotations

import argparse
import json

HELP = "list installed models and the official models that can be fetched or imported"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    from tsfm_backend.catalog import load_catalog
    from tsfm_backend.store import installed_models, is_bundled, models_dir

    installed = installed_models()
    catalog = load_catalog()
    if args.json:
        print(json.dumps({
            "installed": [card.to_dict() for card in installed],
            "catalog": [
                {"id": e.id, "title": e.title, "family": e.family, "format": e.format, "license": e.license,
                 "redistributable": e.redistributable, "downloadable": e.downloadable}
                for e in catalog
            ],
        }, indent=2))
        return 0
    print(f"Installed (store {models_dir()}, then bundled with the package):")
    if not installed:
        print("  none yet: `tsfm-backend fetch ID` or `tsfm-backend import FILE`")
    for card in installed:
        patch = "x".join(str(p) for p in card.patch_size)
        where = "bundled" if is_bundled(card.id) else "store"
        print(f"  {card.id:<32} {card.family:<10} {card.kind:<10} {len(card.classes):>3} classes  "
              f"patch {patch:<11} {where}")
    installed_ids = {card.id for card in installed}
    print("\nCatalog:")
    for entry in catalog:
        how = "fetch" if entry.downloadable else "manual download + import"
        state = "installed" if entry.id in installed_ids else how
        print(f"  {entry.id:<32} {entry.family:<8} {entry.license:<18} {state}")
        print(f"  {'':<32} {entry.title}")
    return 0
