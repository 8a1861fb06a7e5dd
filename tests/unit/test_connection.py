"""Which server URLs the agent and CLI accept, the reason a failed connection gets, and that
a retry loop still stops when a library turns its cancellation into a connection error."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest

from wiremesh.agent.connection import (
    Trust,
    TrustError,
    raise_if_cancelled,
    reason,
    unreachable,
)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:8080",
                                 "http://[::1]:8080", "https://192.0.2.1:8443",
                                 "https://mesh.example.org"])
def test_accepted_urls(url: str) -> None:
    Trust().check(url)


@pytest.mark.parametrize("url", ["http://192.0.2.1:8080", "http://mesh.example.org",
                                 "http://[fd00::1]:8080"])
def test_plain_http_off_the_machine_is_refused(url: str) -> None:
    with pytest.raises(TrustError, match=r"refusing plain http://.*--insecure"):
        Trust().check(url)
    Trust(insecure=True).check(url)


@pytest.mark.parametrize("url", ["ftp://192.0.2.1", "192.0.2.1:8080", "https://",
                                 # urlsplit raised ValueError: a traceback from every command
                                 "http://[::1", "https://a:99999", "https://a:-1", "https://a:x",
                                 "https://a:0"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(TrustError, match="expected https://HOST"):
        Trust(insecure=True).check(url)


def test_unusable_ca_file_is_named(tmp_path) -> None:
    with pytest.raises(TrustError, match=r"--ca-file .*missing\.pem: no such file"):
        Trust(str(tmp_path / "missing.pem")).check("https://192.0.2.1")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TrustError, match=r"--ca-file .*junk\.pem: TLS error: no certificate"):
        Trust(str(junk)).check("https://192.0.2.1")


def test_insecure_skips_verification_and_ca_file_builds_a_context(tmp_path) -> None:
    from wiremesh.lab.pki import make_ca_file

    assert Trust(insecure=True).verify() is False
    assert Trust().verify() is True
    assert isinstance(Trust(str(make_ca_file(tmp_path / "ca.pem"))).verify(), ssl.SSLContext)


def _raised(exc: BaseException, cause: BaseException) -> BaseException:
    """`exc` as raised `from cause` (the chain httpx builds)."""
    try:
        raise exc from cause
    except BaseException as e:
        return e


def test_reason_walks_to_the_os_error_under_empty_wrappers() -> None:
    refused = _raised(httpx.ConnectError("All connection attempts failed"),
                      _raised(OSError("All connection attempts failed"),
                              ConnectionRefusedError(111, "Connect call failed")))
    assert unreachable("https://192.0.2.1:8443", refused) == (
        "cannot reach the server at https://192.0.2.1:8443: connection refused")
    assert reason(_raised(httpx.ConnectTimeout(""), TimeoutError())) == "connection timed out"
    assert reason(httpx.ReadTimeout("")) == "no answer in time (read timed out)"
    assert reason(_raised(httpx.ConnectError(""), OSError(113, "No route to host"))) == (
        "no route to host")
    assert reason(RuntimeError()) == "RuntimeError"


def test_reason_names_the_certificate_problem() -> None:
    bad = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] ...")
    bad.verify_message = "unable to get local issuer certificate"
    assert reason(_raised(httpx.ConnectError("[SSL] ..."), bad)) == (
        "certificate verify failed: unable to get local issuer certificate")
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
    assert reason(_raised(httpx.ConnectError(""), plain)) == "TLS error: wrong version number"


def test_a_retry_loop_stops_on_a_cancellation_turned_into_a_tls_error() -> None:
    async def read_stream() -> None:
        # What httpx did when SIGTERM cancelled the agent in the middle of a TLS read.
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            raise ssl.SSLError("The operation did not complete (read)") from None
        raise ConnectionResetError  # the server went away: retry

    async def follow_forever() -> None:
        for _ in range(10):  # bounded, so a loop that swallows its cancellation fails here
            try:
                await read_stream()
            except OSError:
                raise_if_cancelled()
                await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.create_task(follow_forever())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.cancelled(), "the loop went on after its cancellation"

    asyncio.run(main())
