"""The admin API's answer to a reload that changes nothing: the running appliance raises
`ReloadError`, the API maps it to HTTP (409: no file to read again, 400: a bad file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from appliance.config import AdminConfig
from appliance.web.admin import Admin, ReloadError


class Refusing:
    """`Actions` whose reload always refuses (the rest is never asked here)."""

    def __init__(self, error: ReloadError) -> None:
        self.error = error

    async def reload(self) -> dict[str, Any]:
        raise self.error


def _request(token: str) -> web.BaseRequest:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("127.0.0.1", 40000) if name == "peername" else default
    )
    return make_mocked_request(
        "POST",
        "/api/admin/reload",
        headers={"Authorization": f"Bearer {token}", "Host": "localhost"},
        transport=transport,
    )


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        (ReloadError("running on the embedded default configuration", conflict=True), 409, ""),
        (ReloadError("apt: not a mapping (nothing changed)"), 400, "nothing changed"),
    ],
)
async def test_a_refused_reload_is_an_http_error(
    tmp_path: Path, error: ReloadError, status: int, text: str
) -> None:
    admin = Admin(AdminConfig(token_file=tmp_path / "token", allow=("127.0.0.1/32",)))
    assert admin.token is not None
    with pytest.raises(web.HTTPException) as raised:
        await admin.handle(_request(admin.token), Refusing(error))  # type: ignore[arg-type]
    assert raised.value.status == status
    assert raised.value.text == f"reload: {error}\n" and text in raised.value.text
