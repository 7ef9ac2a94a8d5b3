"""Settings from CLI flags and IMGSERVE_* variables; JSON log lines carry the request id."""

from __future__ import annotations

import json
import logging

import pytest

from service.config import Settings
from service.logging import JsonFormatter, configure_logging, request_id


def test_cli_flags_and_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_PORT", "9001")
    monkeypatch.setenv("IMGSERVE_API_KEY", "s3cret")
    s = Settings(_cli_parse_args=["--max-batch-size", "4", "--no-warmup", "--models", '["a","b"]'])  # type: ignore[call-arg]
    assert s.port == 9001 and s.max_batch_size == 4 and s.warmup is False and s.models == ["a", "b"]
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)  # secrets stay out of logs


def test_bad_flag_value_is_a_clear_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from service.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--runtime", "cobol"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--runtime" in err and "'cobol'" in err and "IMGSERVE_RUNTIME" in err
    assert "use auto or one of onnxruntime, openvino, pytorch, tensorrt" in err


def test_json_logs_carry_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    token = request_id.set("req-42")
    try:
        logging.getLogger("service.test").info("classified %d images", 3)
    finally:
        request_id.reset(token)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["request_id"] == "req-42" and line["message"] == "classified 3 images"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    configure_logging("text", "INFO")


def test_openapi_describes_classify_forms_and_the_error_shape() -> None:
    from service.config import Settings
    from service.http.app import create_app

    schema = create_app(Settings()).openapi()
    op = schema["paths"]["/classify"]["post"]
    forms = op["requestBody"]["content"]
    assert "multipart/form-data" in forms and "image/jpeg" in forms and "application/octet-stream" in forms
    assert forms["multipart/form-data"]["schema"]["properties"]["file"]["items"]["format"] == "binary"
    assert "predictions" in str(op["responses"]["200"])
    for code in ("400", "404", "413", "415", "422", "503", "504"):
        ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    err = schema["components"]["schemas"]["ErrorResponse"]
    assert err["properties"]["error"]["required"] == ["code", "message"]
