"""A whole inbound call over real sockets: Event Grid → answer (real SDK, fake ACS) → ACS connects
to the media URL it was given, as ACS does (with ``x-ms-call-connection-id``) → ACS reports the
call disconnected → the pipeline stops."""

from __future__ import annotations

from acs_support import serve, wait_until

from voicebot.acs.calls import CallState
from voicebot.testing.acs_simulator import ACSCallSimulator
from voicebot.testing.fake_call_automation import FakeCallAutomation


async def test_an_answered_call_streams_until_acs_disconnects_it(acs: FakeCallAutomation) -> None:
    async with serve(acs) as server:
        response = await server.client.post(
            server.webhook("events"), json=acs.offer_call("+15551234567", "+15557654321")
        )
        (call_id,) = response.json()["answered"]
        transport_url = acs.of("answer_call")[0].body["mediaStreamingOptions"]["transportUrl"]

        async with ACSCallSimulator(
            transport_url,
            call_connection_id=call_id,
            correlation_id=acs.calls[call_id].correlation_id,
        ) as sim:
            await wait_until(lambda: call_id in server.state.active, timeout=2)
            runner = server.state.active.get(call_id)
            assert runner is not None
            await runner.wait_started()
            await sim.silence(100)

            assert await acs.send_event(call_id, "CallDisconnected") == 200
            await wait_until(lambda: call_id not in server.state.active, timeout=3)
        record = await server.state.calls.get(call_id)
    assert record is not None and record.state is CallState.DISCONNECTED
