"""Commands for sites of co-located sensors: ``site add`` and ``site list``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from provisioning import fleet, sites
from provisioning.output import Output

_Groups = Any  # argparse's _SubParsersAction is private; typing it buys nothing here


def add_commands(groups: _Groups) -> None:
    """Add ``site add|list`` to the top-level parser."""
    p = groups.add_parser("site", help="co-located sensors for the quality validator",
                          description="Declare sites: three or more sensors measuring the "
                          "same quantity in one place (docs/QUALITY.md).")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="declare a site",
                         description="Write FLEET/sites/NAME.toml: the stream and field the "
                         "sensors measure, the validator that reads them, each sensor's "
                         "stated accuracy.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--fleet", required=True, type=Path, metavar="FLEET_DIR")
    add.add_argument("--stream", required=True, help="the stream, e.g. climate")
    add.add_argument("--field", required=True, help="the value judged, e.g. Cel or %%RH")
    add.add_argument("--validator", required=True, metavar="RECIPIENT",
                     help="the recipient that validates (every device must grant it)")
    add.add_argument("--by-consent", action="store_true",
                     help="the validator reads the sensors under their owners' consents "
                     "(a company): do not require the devices to grant it")
    add.add_argument("--sensor", action="append", required=True, metavar="DEVICE[=ACCURACY]",
                     help="a device of the site (three or more), with its stated accuracy")
    add.add_argument("--accuracy", type=float, metavar="PLUS_MINUS",
                     help="accuracy of sensors given without one (DHT22: 0.5 °C)")
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.set_defaults(handler=run_site_add)
    lst = sub.add_parser("list", help="list sites", description="List the fleet's sites.")
    lst.add_argument("--fleet", required=True, type=Path, metavar="FLEET_DIR")
    lst.add_argument("--json", action="store_true", help="print the result as JSON")
    lst.set_defaults(handler=run_site_list)


def run_site_add(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    cfg = fleet.load_fleet(args.fleet)
    sensors = [sites.parse_sensor(s, args.accuracy) for s in args.sensor]
    with fleet.changing(cfg):
        site = sites.add_site(cfg, args.name, stream=args.stream, field=args.field,
                              validator=args.validator, sensors=sensors,
                              by_consent=args.by_consent)
    if out.as_json:
        out.json({"name": site.name, "stream": site.stream, "field": site.field,
                  "validator": site.validator,
                  "sensors": [{"device": s.device, "device_id": s.device_id,
                               "accuracy": s.accuracy} for s in site.sensors]})
    else:
        out.line(f"site {site.name}: {len(site.sensors)} sensors of {site.stream}/{site.field}"
                 f", validated by {site.validator}")
    return 0


def run_site_list(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    found = sites.list_sites(fleet.load_fleet(args.fleet))
    if out.as_json:
        out.json([{"name": n, "stream": s, "field": f, "sensors": c} for n, s, f, c in found])
    else:
        out.table("sites", ["name", "stream", "field", "sensors"],
                  [[n, s, f, str(c)] for n, s, f, c in found])
    return 0
