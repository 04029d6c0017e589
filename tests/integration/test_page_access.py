"""Getting into a meeting by its access level, on the meeting page itself (Chromium,
driven by tests/browser/access-page.mjs) against a real Synapse, the Matrix side played
by matrix-nio clients:

- a member of the room identifies with a code: `!visio entrer CODE` sent from the room,
  ✅ on the bot's private prompt (an encrypted one-to-one room), the page says who they
  are and enters a members-only meeting, where they carry the « identifié·e » badge;
- a member who identified from the meeting's thread and then leaves the room is sent
  out of the meeting, and the page says why;
- a guest of a `confiance` meeting waits in the lobby, a moderator's ✅ on the lobby
  notice lets them in, and `!visio exclure` removes them: the page says why;
- a guest admitted with `!visio admettre <n>` is sent out when the level becomes
  `membres`, and the page says so;
- a guest refused with `!visio refuser <n>` sees the refusal screen.

Screenshots: target/browser-screenshots/access-*.png.
"""

from __future__ import annotations

import re

import pytest

from harness import Env, wait_for
from harness.page import PageScript as BrowserPage
from harness.page import require_browser
from harness.meetings import NOTICE_S, body, in_thread, send_in_thread, start_meeting, wait_event

# Each wait of the page script, and of the test for the page (Chromium on 2 loaded cores).
PAGE_S = 90


require_browser()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("access"))
    yield e
    e.close()


def access_page(env, *args: str) -> BrowserPage:
    """tests/browser/access-page.mjs running in the background; its JSON progress lines."""
    return BrowserPage(env.service.bin, "access-page.mjs", *args, timeout=PAGE_S)


def shown_text(e: dict) -> str:
    """What a message shows: its body, or the body of the edit it carries."""
    content = e.get("content", {})
    return (content.get("m.new_content") or {}).get("body", "") or body(e)


def bot_reply(env, user, room: str, text: str, what: str) -> dict:
    return wait_event(user, room, lambda e: e.get("sender") == env.bot and text in body(e), what)


def set_access(env, user, room: str, level: str, label: str) -> None:
    """`!visio accès <level>` from a moderator; waits for the bot's confirmation."""
    user.send_text(room, f"!visio accès {level}")
    bot_reply(env, user, room, f"{label} — ", f"the access level {label!r} confirmed")


def moderator_room(env, owner: str, name: str):
    """A room created by `owner` (an encrypting client: the bot's private prompts are
    encrypted), with the bot in it. The room itself is in clear."""
    user = env.e2ee_user(owner)
    room = user.create_room(name=name)
    user.invite(room, env.bot)
    user.wait_membership(room, env.bot, "join")
    user.sync(0)
    return user, room


def accept_bot_invite(env, user) -> str:
    """Waits for the bot's invitation to a one-to-one room, joins it; its id."""

    def invited():
        user.sync(500)
        return next((r for r, room in user.client.invited_rooms.items() if getattr(room, "inviter", None) == env.bot), None)

    room = wait_for(invited, NOTICE_S, "the bot's invitation to a private conversation", interval=0)
    user._run(user.client.join(room))
    user.wait_membership(room, user.user_id, "join")
    return room


def react(user, room: str, event_id: str, key: str = "✅") -> None:
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
    resp = user._run(user.client.room_send(room, "m.reaction", content, ignore_unverified_devices=True))
    assert getattr(resp, "event_id", None), f"reaction failed: {resp}"


def test_a_member_identifies_with_a_code_and_enters_a_members_only_meeting(env):
    amelie, room = moderator_room(env, "amelie", "Réservé")
    _, slug = start_meeting(env, amelie, room, "!visio Comité restreint", "Comité restreint")
    link = f"{env.service.url}/m/{slug}"
    set_access(env, amelie, room, "membres", "membres")

    page = access_page(env, "--scenario", "identify", "--link", link, "--name", "Amélie", "--start", "guest")
    try:
        # As a guest first: the server's sentence, and a way to identify from there.
        refusal = page.reached("refusal")
        assert "réservée aux membres du salon" in refusal["text"], refusal
        assert refusal["focused"], "the focus moves to the refusal's heading"

        code = page.reached("code")
        assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{8}", code["code"]), code
        assert code["command"] == f"!visio entrer {code['code']}", code
        assert code["focused"], "the focus moves to the code step's heading"
        assert code["copied"], code

        # From the room: the code, then the bot's answer and its private prompt.
        amelie.send_text(room, code["command"])
        bot_reply(env, amelie, room, "Confirmez dans notre conversation privée", "the bot's answer to the code")
        page.reached("confirming")
        direct = accept_bot_invite(env, amelie)
        prompt = wait_event(
            amelie,
            direct,
            lambda e: e.get("sender") == env.bot and e.get("type") in ("m.room.message", "m.room.encrypted"),
            "the private confirmation prompt",
        )
        assert prompt.get("decrypted"), f"the prompt is encrypted for its reader and readable: {prompt}"
        assert "✅ pour confirmer" in body(prompt) and "Comité restreint" in body(prompt), body(prompt)
        react(amelie, direct, prompt["event_id"])

        joined = page.reached("joined")
        assert joined["verifiedAs"] == amelie.user_id, joined
        assert "identify:verified" in joined["seen"], joined
        badge = page.reached("badge")
        assert badge["matrixId"] == amelie.user_id, badge
        assert "identifié" in badge["listed"], badge
        page.finish()
    finally:
        page.close()
    bot_reply(env, amelie, direct, "C’est confirmé", "the bot's confirmation in the private conversation")


def test_a_member_identified_from_the_thread_who_leaves_the_room_leaves_the_meeting(env):
    """The code sent as a reply in the meeting's thread; the member then leaves the
    Matrix room, and the page says that is why it left the meeting."""
    gabriel, room = moderator_room(env, "gabriel", "Départ")
    fanny = env.e2ee_user("fanny")
    gabriel.invite(room, fanny.user_id)
    fanny._run(fanny.client.join(room))
    gabriel.wait_membership(room, fanny.user_id, "join")
    fanny.sync(0)
    notice, slug = start_meeting(env, gabriel, room, "!visio Point d’étape", "Point d’étape")
    link = f"{env.service.url}/m/{slug}"
    set_access(env, gabriel, room, "membres", "membres")

    page = access_page(env, "--scenario", "identify", "--link", link, "--name", "Fanny", "--then", "removed")
    try:
        code = page.reached("code")
        send_in_thread(fanny, room, notice["event_id"], code["command"])
        direct = accept_bot_invite(env, fanny)
        prompt = wait_event(fanny, direct, lambda e: e.get("sender") == env.bot and "✅" in body(e), "the private confirmation prompt")
        react(fanny, direct, prompt["event_id"])
        assert page.reached("badge")["matrixId"] == fanny.user_id

        fanny._run(fanny.client.room_leave(room))
        removed = page.reached("removed")
        assert removed["kind"] == "left-room", removed
        assert removed["title"] == "Vous avez quitté le salon", removed
        page.finish()
    finally:
        page.close()


def test_a_guest_waits_is_let_in_with_a_reaction_then_removed(env):
    bruno, room = moderator_room(env, "bruno", "Confiance")
    notice, slug = start_meeting(env, bruno, room, "!visio Atelier ouvert", "Atelier ouvert")
    root = notice["event_id"]
    link = f"{env.service.url}/m/{slug}"
    set_access(env, bruno, room, "confiance", "confiance")

    page = access_page(env, "--scenario", "lobby", "--link", link, "--name", "Gaston", "--expect", "admitted", "--then", "removed")
    try:
        waiting = page.reached("lobby")
        assert waiting["number"] >= 1 and waiting["focused"], waiting
        # The lobby notice in the meeting's thread: a moderator's ✅ on it lets in whoever
        # waits longest.
        lobby_notice = wait_event(
            bruno,
            room,
            lambda e: e.get("sender") == env.bot
            and "Gaston" in body(e)
            and (e.get("content", {}).get("m.relates_to") or {}).get("rel_type") != "m.replace",
            "the lobby notice naming Gaston",
        )
        assert in_thread(lobby_notice, root) or lobby_notice["event_id"], lobby_notice
        react(bruno, room, lobby_notice["event_id"])
        page.reached("joined")

        bruno.send_text(room, "!visio exclure Gaston")
        bot_reply(env, bruno, room, "Gaston a été retiré·e de la visio", "the removal's confirmation")
        removed = page.reached("removed")
        assert removed["kind"] == "removed", removed
        assert "retiré·e" in removed["title"], removed
        page.finish()
    finally:
        page.close()


def test_a_stricter_access_level_sends_an_admitted_guest_out_and_the_page_says_why(env):
    """The reason comes from the server (/rtc/validate after the removal): not the page's
    default "removed by a moderator"."""
    denise, room = moderator_room(env, "denise", "Durci")
    _, slug = start_meeting(env, denise, room, "!visio Revue", "Revue")
    link = f"{env.service.url}/m/{slug}"
    set_access(env, denise, room, "confiance", "confiance")

    page = access_page(env, "--scenario", "lobby", "--link", link, "--name", "Irène", "--expect", "admitted", "--then", "removed")
    try:
        number = page.reached("lobby")["number"]
        denise.send_text(room, f"!visio admettre {number}")
        page.reached("joined")
        set_access(env, denise, room, "membres", "membres")
        removed = page.reached("removed")
        assert removed["kind"] == "access-changed", removed
        assert removed["title"] == "L’accès à la réunion a changé", removed
        page.finish()
    finally:
        page.close()


def test_a_guest_refused_from_the_lobby_sees_why(env):
    chloe, room = moderator_room(env, "chloe", "Refus")
    _, slug = start_meeting(env, chloe, room, "!visio Entretien", "Entretien")
    link = f"{env.service.url}/m/{slug}"
    set_access(env, chloe, room, "confiance", "confiance")

    page = access_page(env, "--scenario", "lobby", "--link", link, "--name", "Hector", "--expect", "refused")
    try:
        number = page.reached("lobby")["number"]
        chloe.send_text(room, f"!visio refuser {number}")
        refused = page.reached("refused")
        assert refused["title"] == "Entrée refusée", refused
        page.finish()
    finally:
        page.close()
    # The lobby notice, edited, says who decided.
    wait_event(
        chloe,
        room,
        lambda e: e.get("sender") == env.bot and "Hector" in shown_text(e) and "refusé·e" in shown_text(e),
        "the lobby notice saying Hector was refused",
    )


def test_a_moderator_lets_in_mutes_and_removes_a_guest_then_ends_the_meeting_from_the_page(env):
    """The moderator's tools on the page (their participant carries `tchap.moderator`):
    the waiting room panel, mute, remove with a confirmation, end for everyone. Skipped
    while the server has no moderation API for the page."""
    emma, room = moderator_room(env, "emma", "Modération")
    _, slug = start_meeting(env, emma, room, "!visio Plénière", "Plénière")
    link = f"{env.service.url}/m/{slug}"
    set_access(env, emma, room, "confiance", "confiance")

    moderator = access_page(env, "--scenario", "identify", "--link", link, "--name", "Emma", "--moderate", "Jules")
    guest = None
    try:
        code = moderator.reached("code")
        emma.send_text(room, code["command"])
        direct = accept_bot_invite(env, emma)
        prompt = wait_event(emma, direct, lambda e: e.get("sender") == env.bot and "✅" in body(e), "the private confirmation prompt")
        react(emma, direct, prompt["event_id"])
        moderator.reached("badge")

        def ready():
            hit = next((p for p in moderator.progress if p["event"] in ("moderator", "no-moderation")), None)
            if hit is None and moderator.proc.poll() not in (None, 0):
                raise AssertionError(f"the moderator's page failed:\n{moderator.stderr}")
            return hit

        if wait_for(ready, PAGE_S, "the moderator's tools (or their absence)")["event"] == "no-moderation":
            moderator.finish()
            pytest.skip("the server has no moderation API for the page yet (GET .../lobby is 404)")

        guest = access_page(env, "--scenario", "lobby", "--link", link, "--name", "Jules", "--expect", "admitted", "--then", "removed")
        guest.reached("lobby")
        moderator.reached("guest-waiting")
        guest.reached("joined")
        moderator.reached("guest-in")
        moderator.reached("guest-muted")
        removed = guest.reached("removed")
        assert removed["kind"] == "removed", removed
        moderator.reached("guest-removed")
        moderator.tell("end")
        moderator.reached("ended")
        guest.finish()
        moderator.finish()
    finally:
        moderator.close()
        if guest is not None:
            guest.close()
