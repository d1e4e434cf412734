"""S3 credentials and region from the standard places (stasis/remote.h). moto accepts any
signature, so these run against the range server: it serves path-style /bucket/key and,
after require_sigv4, checks each request's SigV4 signature as S3 does."""

import re

import pytest

from harness import ACCESS_KEY, BUCKET, SECRET_KEY, SESSION_TOKEN

LOC = f"s3://{BUCKET}/model-raw.stasis"

PROFILE_KEYS = {  # profile -> (access key id, secret, session token)
    "default": ("AKIDDEFAULTPROFILE01", "default/secret+0000000000000000000000001", None),
    "ci": ("AKIDCIPROFILE0000001", "ci/secret+00000000000000000000000000001",
           "ci-session/token+000000000000000000000001"),
}


def scopes(server):
    """(access key id, region) of every request's Authorization header; None when unsigned."""
    out = []
    for r in server.requests:
        auth = r.headers.get("authorization")
        m = auth and re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/s3/aws4_request",
                              auth)
        out.append(m.groups() if m else None)
    return out


@pytest.fixture
def aws_files(stasis, tmp_path):
    """A credentials file with two profiles and a config file with their regions; their
    secrets join the ones no output may contain."""
    creds = tmp_path / "credentials"
    creds.write_text("".join(
        f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n" +
        (f"aws_session_token = {token}\n" if token else "") + "\n"
        for name, (key, secret, token) in PROFILE_KEYS.items()))
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-north-1\n\n[profile ci]\nregion = ap-south-1\n")
    for _, secret, token in PROFILE_KEYS.values():
        stasis.secrets.update(s for s in (secret, token) if s)
    return creds, config


@pytest.fixture
def signed_server(range_server):
    keys = {ACCESS_KEY: (SECRET_KEY, None)}
    keys.update({key: (secret, token) for key, secret, token in PROFILE_KEYS.values()})
    range_server.require_sigv4(keys)
    return range_server


def run(stasis, server, env, command="verify", *args):
    return stasis.run(command, LOC, "--s3-endpoint", server.url, *args, env=env)


def test_environment_credentials(stasis, signed_server):
    r = run(stasis, signed_server, stasis.aws_env(AWS_REGION="eu-west-3"))
    assert r.returncode == 0, str(r)
    assert set(scopes(signed_server)) == {(ACCESS_KEY, "eu-west-3")}


def test_session_token_is_sent_and_signed(stasis, range_server):
    range_server.require_sigv4({ACCESS_KEY: (SECRET_KEY, SESSION_TOKEN)})
    r = run(stasis, range_server, stasis.aws_env(AWS_SESSION_TOKEN=SESSION_TOKEN))
    assert r.returncode == 0, str(r)
    for req in range_server.requests:
        assert req.headers.get("x-amz-security-token") == SESSION_TOKEN
        assert "x-amz-security-token" in req.headers["authorization"]  # in SignedHeaders


def test_default_region_variable(stasis, signed_server):
    env = stasis.aws_env(AWS_REGION=None, AWS_DEFAULT_REGION="ca-central-1")
    r = run(stasis, signed_server, env, "inspect")
    assert r.returncode == 0, str(r)
    assert set(scopes(signed_server)) == {(ACCESS_KEY, "ca-central-1")}


def test_named_profile_from_files(stasis, signed_server, aws_files):
    creds, config = aws_files
    env = stasis.env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_CONFIG_FILE=config, AWS_PROFILE="ci")
    r = run(stasis, signed_server, env, "export", "-o", stasis.home / "out.safetensors")
    assert r.returncode == 0, str(r)
    key, _, token = PROFILE_KEYS["ci"]
    assert set(scopes(signed_server)) == {(key, "ap-south-1")}
    assert all(req.headers.get("x-amz-security-token") == token for req in signed_server.requests)


def test_default_profile_from_home(stasis, signed_server, aws_files):
    """No AWS_* variable at all: ~/.aws/credentials and ~/.aws/config of $HOME."""
    creds, config = aws_files
    (stasis.home / ".aws").mkdir()
    creds.rename(stasis.home / ".aws" / "credentials")
    config.rename(stasis.home / ".aws" / "config")
    r = run(stasis, signed_server, stasis.env())
    assert r.returncode == 0, str(r)
    assert set(scopes(signed_server)) == {(PROFILE_KEYS["default"][0], "eu-north-1")}


def test_environment_beats_profile(stasis, signed_server, aws_files):
    creds, config = aws_files
    env = stasis.aws_env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_CONFIG_FILE=config,
                         AWS_PROFILE="ci", AWS_REGION="us-west-2")
    r = run(stasis, signed_server, env)
    assert r.returncode == 0, str(r)
    assert set(scopes(signed_server)) == {(ACCESS_KEY, "us-west-2")}


def test_missing_profile_is_a_clear_error(stasis, signed_server, aws_files):
    creds, config = aws_files
    env = stasis.env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_CONFIG_FILE=config,
                     AWS_PROFILE="no-such-profile")
    r = run(stasis, signed_server, env)
    assert r.returncode != 0, str(r)
    assert "no-such-profile" in r.stderr and "profile" in r.stderr.lower(), str(r)
    assert signed_server.requests == []  # it failed before asking the server anything


def test_no_credentials_means_unsigned(stasis, range_server):
    r = run(stasis, range_server, stasis.env())
    assert r.returncode == 0, str(r)
    assert range_server.requests and set(scopes(range_server)) == {None}


@pytest.mark.parametrize("key_id, secret, code", [
    (ACCESS_KEY, SECRET_KEY[::-1], "SignatureDoesNotMatch"),
    ("AKIDUNKNOWN000000001", SECRET_KEY, "InvalidAccessKeyId"),
])
def test_wrong_credentials_are_403(stasis, signed_server, key_id, secret, code):
    stasis.secrets.add(secret)
    env = stasis.env(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    r = run(stasis, signed_server, env)
    assert r.returncode != 0, str(r)
    assert "403" in r.stderr or "denied" in r.stderr.lower(), str(r)
    assert [req.status for req in signed_server.requests] == [403]  # a 403 is not retried


def test_forbidden_http_object(stasis, range_server):
    range_server.faults.add("403", count=None)
    r = stasis.run("inspect", f"{range_server.url}/model-raw.stasis")
    assert r.returncode != 0, str(r)
    assert "403" in r.stderr or "denied" in r.stderr.lower(), str(r)
