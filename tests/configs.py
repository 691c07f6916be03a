"""The one way tests write the appliance's configuration file: through its own parser and
`config.dump`, so a mistake in a test's configuration fails where the test writes it,
naming the key, and every file is written exactly as `archive-local config` prints it.

What `dump` writes is the whole effective configuration (the defaults filled in), and it
keeps nothing of this machine frozen into it: `workers: auto` stays `auto` (the count only
in a comment), the apt `sources` and the `file:` mirror lists stay paths that the service
reads when it runs, not their contents. So a written file behaves as the dict it came from.

Left raw on purpose (they write what this builder would refuse or rewrite):
- invalid or hand-written YAML the tests are about: the configuration error tests, the
  `config` output and `workers: 3` read back in tests/e2e/commands/test_cli.py, the broken
  reload in tests/e2e/web/test_observability.py, the loader tests in tests/unit;
- tests/e2e/service/test_service_unit.py: the file an operator writes inside the systemd
  namespace;
- charm/tests: the charm renders its own configuration, which is what they check.
Other YAML the tests write is not the appliance's configuration (products specs for
`publish`, Prometheus's, cloud-init's user-data).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from appliance import config


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """`data` (a YAML document as a dict) checked by the appliance's parser and written to
    `path` as `archive-local config` prints it; replaced whole, so a service reloading it
    never reads half a file. Raises `ConfigError` naming the key `data` gets wrong."""
    parsed = config.parse(data, str(path))
    text = config.dump(parsed)
    again = config.parse(yaml.safe_load(text), str(path))
    if again != parsed:  # `dump` lost something: the file would not be what the test said
        raise AssertionError(f"{path}: config.dump does not read back the same:\n{text}")
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)
    return path
