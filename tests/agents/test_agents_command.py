"""``voicebot agents``: a store's agents listed as text and JSON; a broken store's problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voicebot.agents.store import check_store
from voicebot.cli import main
from voicebot.services.local import resolve_voice

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["agents", *args])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    return data


def test_the_bank_store_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = listed(capsys, "--store", str(REPO / "agents"))
    assert data["entry"] == "auth" and data["description"] == "Contoso Bank customer line"
    agents = {a["name"]: a for a in data["agents"]}
    assert [a["name"] for a in data["agents"]] == ["auth", "billing", "support"]
    assert [a["entry"] for a in data["agents"]] == [True, False, False]
    billing = agents["billing"]
    assert billing["tools"] == ["get_balance", "get_last_payment", "make_payment"]
    assert billing["handoffs"] == [
        {"to": "support", "mode": "announced"},
        {"to": "human", "mode": "announced"},
    ]
    assert billing["voice"] == {
        "name": "en-US-AndrewMultilingualNeural",
        "style": "customerservice",
        "rate": None,
        "local": {"voice": "joe", "pitch": 0.86, "length_scale": 1.05, "derived": False},
    }
    assert billing["engine"] == "auto"
    pitches = {name: a["voice"]["local"]["pitch"] for name, a in agents.items()}
    assert len(set(pitches.values())) == 3  # offline, each agent sounds different


def test_as_text_the_entry_agent_is_marked(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--store", str(REPO / "agents"))
    assert code == 0
    lines = out.splitlines()
    assert "* auth: Greets the caller and verifies their identity" in "\n".join(lines)
    assert "  billing: Tells verified callers" in out
    assert "    local:    joe, pitch 0.86, length 1.05 (voice.local)" in lines
    assert "    handoffs: billing, support, human" in lines


def test_a_pipeline_gives_the_engine_its_calls_run_on(
    capsys: pytest.CaptureFixture[str], pipeline_file: Any
) -> None:
    offline = listed(capsys, "--pipeline", str(REPO / "pipelines" / "acs_phone.yaml"))
    assert offline["llm"] is None
    assert {a["engine"] for a in offline["agents"]} == {"policy"}
    path = pipeline_file(
        f"name: with-llm\ntransport: acs\nprocessors:\n"
        f"  - stt: {{provider: fake}}\n"
        f"  - agents:\n"
        f"      store: {REPO / 'agents'}\n"
        f"      llm: {{provider: fake, replies: [hello]}}\n"
        f"  - tts: {{provider: local, length_scale: 1.2}}\n"
    )
    with_llm = listed(capsys, "--pipeline", str(path))
    assert with_llm["llm"] == "fake"
    assert {a["engine"] for a in with_llm["agents"]} == {"llm"}
    # local voices start from the pipeline's local TTS: support gives no length scale
    support = with_llm["agents"][2]["voice"]["local"]
    assert (support["pitch"], support["length_scale"]) == (1.14, 1.2)
    code, out, _ = run(capsys, "--pipeline", str(path))
    assert "engine:   llm (engine: auto)" in out


def test_a_voice_without_a_local_part_gets_a_derived_pitch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "store.yaml").write_text("entry: solo\n")
    (tmp_path / "solo.yaml").write_text(
        "name: solo\nengine: policy\nvoice: {name: en-US-AvaMultilingualNeural}\n"
    )
    (solo,) = listed(capsys, "--store", str(tmp_path))["agents"]
    derived = resolve_voice("en-US-AvaMultilingualNeural")
    assert solo["voice"]["local"] == {
        "voice": "joe",
        "pitch": derived.pitch,
        "length_scale": 1.0,
        "derived": True,
    }
    assert solo["engine"] == "policy" and solo["tools"] == [] and solo["entry"] is True
    _, out, _ = run(capsys, "--store", str(tmp_path))
    assert f"local:    joe, pitch {derived.pitch:g}, length 1 (derived from the name)" in out


def test_a_broken_store_prints_its_problems_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = DATA / "broken_store"
    _, problems = check_store(folder)
    code, out, err = run(capsys, "--store", str(folder))
    assert code == 1
    assert out.splitlines() == "\n".join(str(p) for p in problems).splitlines()
    assert err.strip() == f"{len(problems)} problems found."
    code, out, _ = run(capsys, "--store", str(folder), "--json")
    assert code == 1
    assert json.loads(out) == {"problems": [str(p) for p in problems]}


def test_a_bad_local_voice_is_a_store_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "store.yaml").write_text("entry: solo\n")
    (tmp_path / "solo.yaml").write_text(
        "name: solo\nvoice:\n  name: x\n  local: {voice: amy, pitch: 3}\n"
    )
    code, out, _ = run(capsys, "--store", str(tmp_path))
    assert code == 1
    assert (
        "solo.yaml:4: voice.local.voice: value error, not a packaged local voice; packaged: joe"
        in out
    )
    assert "solo.yaml:4: voice.local.pitch: input should be less than or equal to 2 (got 3)" in out


def test_store_and_pipeline_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["agents", "--store", "agents", "--pipeline", "pipelines/acs_phone.yaml"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_local_part_with_only_a_length_still_derives_the_pitch_from_the_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "store.yaml").write_text("entry: solo\n")
    (tmp_path / "solo.yaml").write_text(
        "name: solo\nengine: policy\n"
        "voice: {name: en-US-AvaMultilingualNeural, local: {length_scale: 1.1}}\n"
    )
    (solo,) = listed(capsys, "--store", str(tmp_path))["agents"]
    derived = resolve_voice("en-US-AvaMultilingualNeural", length_scale=1.1)
    assert solo["voice"]["local"] == {
        "voice": "joe",
        "pitch": derived.pitch,
        "length_scale": 1.1,
        "derived": True,
    }
