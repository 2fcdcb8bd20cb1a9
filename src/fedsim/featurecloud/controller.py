"""The participant's own FeatureCloud controller (``featurecloud controller start``): where
its data goes in and its results come out. Reached at ``http://localhost:8000`` on the
participant's machine; never another participant's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.featurecloud.errors import ApiError
from fedsim.featurecloud.http import HttpClient, Pacing, expect_list, expect_ok

UPLOAD_HEADERS = {
    "Origin": "https://featurecloud.ai",
    "Accept": "application/json, text/plain, */*",
}
"""The controller accepts uploads only from the website's origin."""


class Controller:
    def __init__(self, url: str, pacing: Pacing) -> None:
        self._http = HttpClient(url, pacing)
        self.url = self._http.base_url

    def close(self) -> None:
        self._http.close()

    def ping(self) -> None:
        """Raises ``ApiError`` naming the URL and how to start it when it does not answer."""
        try:
            expect_ok(self._http.request("GET", "/ping/"), (200,))
        except ApiError as exc:
            raise ApiError(
                exc.call,
                exc.status,
                f"{exc.problem}; is the FeatureCloud controller running at {self.url}? "
                "(featurecloud controller start --data-dir DIR)",
            ) from exc

    def upload(self, project_id: int, file: Path) -> None:
        self._upload(project_id, file.name, file.read_bytes(), finalize="")

    def finalize(self, project_id: int) -> None:
        """Tells the controller this participant is done; the run starts once all are."""
        self._upload(project_id, "", b"", finalize="true")

    def _upload(self, project_id: int, name: str, data: bytes, finalize: str) -> None:
        expect_ok(
            self._http.request(
                "POST",
                "/file-upload/",
                params={
                    "projectId": project_id,
                    "fileName": name,
                    "finalize": finalize,
                    "consent": "",
                },
                content=data,
                headers=UPLOAD_HEADERS,
            )
        )

    def runs(self, project_id: int) -> list[dict[str, Any]]:
        """The project's runs, newest first, each with its steps' logs and results."""
        return expect_list(
            self._http.request("GET", "/project-runs/", params={"projectId": project_id}),
            ("runNr", "logSteps", "resultSteps"),
        )

    def step_log(self, project_id: int, run: int, step: int) -> bytes:
        return self._download("/logs-download/", project_id, run, step)

    def step_results(self, project_id: int, run: int, step: int) -> bytes:
        """The step's results as the zip the controller hands out."""
        return self._download("/file-download/", project_id, run, step)

    def _download(self, path: str, project_id: int, run: int, step: int) -> bytes:
        response = self._http.request(
            "GET", path, params={"projectId": project_id, "run": run, "step": step}
        )
        expect_ok(response, (200,))
        return response.content
