"""featurecloud.ai's API as one logged-in user sees it (shared/FEATURECLOUD_AI_API.md).

Only the calls; who may make which is decided in ``roles``. A 401 on any call means the
access token ran out: it is refreshed once (or, if the refresh token ran out too, the user
logs in again) and the call repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from fedsim.featurecloud.credentials import Credentials
from fedsim.featurecloud.http import HttpClient, Pacing, expect, expect_list, expect_ok
from fedsim.logs import get_logger

log = get_logger("fc")


class Website:
    def __init__(self, credentials: Credentials, pacing: Pacing) -> None:
        self._credentials = credentials
        self._http = HttpClient(credentials.website, pacing)
        self._access: str | None = None
        self._refresh: str | None = None

    @property
    def username(self) -> str:
        return self._credentials.username

    def close(self) -> None:
        self._http.close()

    def login(self) -> None:
        body = expect(
            self._http.request(
                "POST",
                "/api/auth/login/",
                json={
                    "username": self._credentials.username,
                    "password": self._credentials.password,
                },
            ),
            (200,),
            ("access", "refresh"),
        )
        self._access, self._refresh = str(body["access"]), str(body["refresh"])
        log.info("logged in to %s as %s", self._http.base_url, self._credentials.username)

    def _renew(self) -> None:
        """A new access token from the refresh token; a new login when that ran out too."""
        response = self._http.request(
            "POST", "/api/auth/token/refresh/", json={"refresh": self._refresh}
        )
        if response.status_code == 401:
            log.info("refresh token of %s expired; logging in again", self.username)
            self.login()
            return
        self._access = str(expect(response, (200,), ("access",))["access"])
        log.info("access token of %s refreshed", self.username)

    def call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """An authenticated call; logs in first if needed, renews the token once on 401."""
        if self._access is None:
            self.login()
        response = self._send(method, path, json)
        if response.status_code == 401:
            self._renew()
            response = self._send(method, path, json)
        return response

    def _send(self, method: str, path: str, json: Any) -> httpx.Response:
        return self._http.request(
            method, path, json=json, headers={"Authorization": f"Bearer {self._access}"}
        )

    # the calls, one per row of the API's table

    def site_info(self) -> dict[str, Any]:
        """This user's site identity, for the controller's ``site_info.json``: kept as given
        (its fields are the controller's business), but it must be a JSON object."""
        return expect(self.call("GET", "/api/site/"), (200,))

    def app_store(self) -> list[dict[str, Any]]:
        return expect_list(self.call("GET", "/api/apps/"), ("id", "slug"))

    def library(self) -> list[dict[str, Any]]:
        return expect_list(self.call("GET", "/api/apps/purchase/"), ("id",))

    def add_to_library(self, app_id: int) -> None:
        expect_ok(self.call("POST", f"/api/apps/{app_id}/purchase/"))

    def create_project(self, name: str, description: str) -> int:
        body = expect(
            self.call(
                "POST",
                "/api/projects/",
                {"name": name, "description": description, "status": ""},
            ),
            (200, 201),
            ("id",),
        )
        return int(body["id"])

    def project(self, project_id: int) -> dict[str, Any]:
        return expect(self.call("GET", f"/api/projects/{project_id}/"), (200,), ("status", "role"))

    def set_workflow(
        self, project_id: int, name: str, description: str, app_ids: Sequence[int]
    ) -> None:
        workflow = [
            {
                "id": 0,
                "projectId": project_id,
                "federatedApp": {"id": app_id},
                "order": order,
                "versionCertificationLevel": 1,
            }
            for order, app_id in enumerate(app_ids)
        ]
        expect_ok(
            self.call(
                "PUT",
                f"/api/projects/{project_id}/",
                {
                    "id": project_id,
                    "name": name,
                    "description": description,
                    "status": "ready",
                    "workflow": workflow,
                },
            )
        )

    def set_status(self, project_id: int, status: str) -> None:
        expect_ok(self.call("PUT", f"/api/projects/{project_id}/", {"status": status}))

    def create_token(self, project_id: int) -> str:
        body = expect(
            self.call("POST", f"/api/project-tokens/{project_id}/", {"cmd": "create"}),
            (200, 201),
            ("token",),
        )
        return str(body["token"])

    def join(self, token: str) -> None:
        expect_ok(self.call("POST", "/api/project-tokens/", {"token": token, "cmd": "join"}))
