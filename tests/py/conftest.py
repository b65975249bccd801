import pytest

from harness import start_server


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, append the server's stderr tail to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call":
        srv = item.funcargs.get("server") if hasattr(item, "funcargs") else None
        if srv is not None:
            report.sections.append(("realtime server stderr (tail)", srv.stderr_tail(80)))
