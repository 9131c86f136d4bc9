"""Message catalogs for the waiting room and error pages.

Every language carries the same keys (a unit test holds them to that). A
message is either a plain string or a dict of CLDR plural categories; both use
`{school}` and `{n}` fields. Texts are plain text: markup is never put into a
catalog, so the whole formatted message can be escaped for its context.

Plural categories follow CLDR names ("one", "other") so the browser-side
script can pick the same form with `Intl.PluralRules`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Final

DEFAULT_LANGUAGE: Final = "en"

Message = str | dict[str, str]


def _one_other(n: int) -> str:
    return "one" if n == 1 else "other"


# English, German and Norwegian share the integer rule; the table keeps the
# door open for languages that do not (Polish, Arabic, ...).
_PLURAL_RULES: dict[str, Callable[[int], str]] = {
    "en": _one_other,
    "de": _one_other,
    "nb": _one_other,
}

CATALOGS: dict[str, dict[str, Message]] = {
    "en": {
        "wait.title": "Please wait \u2013 {school}",
        "wait.heading": "It's busy right now",
        "wait.message": (
            "{school} has a lot of visitors at the moment. You have a place in line, "
            "and this page will take you on by itself as soon as it is your turn."
        ),
        "wait.position_label": "Your place in line",
        "wait.eta_label": "Estimated wait:",
        "wait.hint": "Keep this page open. It updates by itself.",
        "wait.button": "Try now",
        "wait.json": {
            "one": "{school} is full right now. Please try again in {n} second.",
            "other": "{school} is full right now. Please try again in {n} seconds.",
        },
        "eta.unknown": "not known yet",
        "eta.under_minute": "less than a minute",
        "eta.minutes": {"one": "about {n} minute", "other": "about {n} minutes"},
        "eta.hours": {"one": "about {n} hour", "other": "about {n} hours"},
        "eta.over_hours": {"one": "more than {n} hour", "other": "more than {n} hours"},
        "down.title": "{school} is not responding",
        "down.heading": "The school's server is not answering",
        "down.message": (
            "{school} is not responding right now. This is not a problem with "
            "your device or your connection."
        ),
        "down.retry": {
            "one": "We will try again in {n} second.",
            "other": "We will try again in {n} seconds.",
        },
        "down.button": "Try again now",
        "down.json": {
            "one": "{school} is not responding. Please try again in {n} second.",
            "other": "{school} is not responding. Please try again in {n} seconds.",
        },
        "resend.title": "Not sent \u2013 {school}",
        "resend.wait": (
            "{school} has too many visitors at the moment, so what you sent (a form, "
            "a log-in or an upload) was not passed on. The school's server has not "
            "received it."
        ),
        "resend.down": (
            "{school} is not responding right now, so what you sent (a form, a log-in "
            "or an upload) was not passed on. The school's server has not received it."
        ),
        "resend.hint": (
            "Nothing was saved. Go back with your browser's Back button and send it "
            "again in a moment."
        ),
        "resend.retry": {
            "one": "Please wait about {n} second first.",
            "other": "Please wait about {n} seconds first.",
        },
        "resend.unknown": (
            "{school} stopped responding while it was handling what you sent (a form, "
            "a log-in or an upload). It may or may not have been saved."
        ),
        "resend.check": (
            "Before you send it again, check whether it arrived, for example by "
            "opening the page again in a moment."
        ),
        "bulk.message": {
            "one": "Too many bulk requests for {school}. Retry after {n} second.",
            "other": "Too many bulk requests for {school}. Retry after {n} seconds.",
        },
        "error.400": "The request could not be understood.",
        "error.408": "The request took too long to arrive.",
        "error.413": "The request is too large.",
        "error.414": "The address is too long.",
        "error.431": "The request headers are too large.",
        "error.501": "This kind of request is not supported.",
        "error.505": "This HTTP version is not supported.",
        "error.client": "The request could not be processed.",
        "error.server": "The gateway could not process the request.",
    },
    "de": {
        "wait.title": "Bitte warten \u2013 {school}",
        "wait.heading": "Gerade ist viel los",
        "wait.message": (
            "Bei {school} sind im Moment sehr viele Besucher. Sie haben einen Platz "
            "in der Warteschlange, und diese Seite leitet Sie automatisch weiter, "
            "sobald Sie an der Reihe sind."
        ),
        "wait.position_label": "Ihr Platz in der Warteschlange",
        "wait.eta_label": "Geschätzte Wartezeit:",
        "wait.hint": "Lassen Sie diese Seite einfach geöffnet. Sie aktualisiert sich von selbst.",
        "wait.button": "Jetzt versuchen",
        "wait.json": {
            "one": "{school} ist gerade ausgelastet. Bitte in {n} Sekunde erneut versuchen.",
            "other": "{school} ist gerade ausgelastet. Bitte in {n} Sekunden erneut versuchen.",
        },
        "eta.unknown": "noch unbekannt",
        "eta.under_minute": "weniger als eine Minute",
        "eta.minutes": {"one": "etwa {n} Minute", "other": "etwa {n} Minuten"},
        "eta.hours": {"one": "etwa {n} Stunde", "other": "etwa {n} Stunden"},
        "eta.over_hours": {"one": "mehr als {n} Stunde", "other": "mehr als {n} Stunden"},
        "down.title": "{school} antwortet nicht",
        "down.heading": "Der Server der Schule antwortet gerade nicht",
        "down.message": (
            "{school} ist im Moment nicht erreichbar. Das liegt nicht an Ihrem "
            "Gerät oder Ihrer Verbindung."
        ),
        "down.retry": {
            "one": "Wir versuchen es in {n} Sekunde erneut.",
            "other": "Wir versuchen es in {n} Sekunden erneut.",
        },
        "down.button": "Jetzt erneut versuchen",
        "down.json": {
            "one": "{school} antwortet nicht. Bitte in {n} Sekunde erneut versuchen.",
            "other": "{school} antwortet nicht. Bitte in {n} Sekunden erneut versuchen.",
        },
        "resend.title": "Nicht gesendet \u2013 {school}",
        "resend.wait": (
            "Bei {school} sind im Moment sehr viele Besucher, deshalb wurde das, was "
            "Sie abgeschickt haben (ein Formular, eine Anmeldung oder ein Upload), nicht "
            "weitergeleitet. Der Server der Schule hat es nicht erhalten."
        ),
        "resend.down": (
            "{school} antwortet im Moment nicht, deshalb wurde das, was Sie abgeschickt "
            "haben (ein Formular, eine Anmeldung oder ein Upload), nicht weitergeleitet. "
            "Der Server der Schule hat es nicht erhalten."
        ),
        "resend.hint": (
            "Es wurde nichts gespeichert. Gehen Sie mit der Zurück-Taste Ihres Browsers "
            "zurück und senden Sie es gleich noch einmal."
        ),
        "resend.retry": {
            "one": "Bitte warten Sie vorher etwa {n} Sekunde.",
            "other": "Bitte warten Sie vorher etwa {n} Sekunden.",
        },
        "resend.unknown": (
            "Der Server von {school} hat nicht mehr geantwortet, während er das "
            "bearbeitet hat, was Sie abgeschickt haben (ein Formular, eine Anmeldung "
            "oder ein Upload). Es kann trotzdem gespeichert worden sein."
        ),
        "resend.check": (
            "Prüfen Sie, bevor Sie es noch einmal senden, ob es angekommen ist, zum "
            "Beispiel indem Sie die Seite gleich noch einmal öffnen."
        ),
        "bulk.message": {
            "one": "Zu viele Massenanfragen für {school}. Erneut versuchen in {n} Sekunde.",
            "other": "Zu viele Massenanfragen für {school}. Erneut versuchen in {n} Sekunden.",
        },
        "error.400": "Die Anfrage konnte nicht verstanden werden.",
        "error.408": "Die Anfrage hat zu lange gedauert.",
        "error.413": "Die Anfrage ist zu groß.",
        "error.414": "Die Adresse ist zu lang.",
        "error.431": "Die Kopfzeilen der Anfrage sind zu groß.",
        "error.501": "Diese Art von Anfrage wird nicht unterstützt.",
        "error.505": "Diese HTTP-Version wird nicht unterstützt.",
        "error.client": "Die Anfrage konnte nicht verarbeitet werden.",
        "error.server": "Das Gateway konnte die Anfrage nicht verarbeiten.",
    },
    "nb": {
        "wait.title": "Vennligst vent \u2013 {school}",
        "wait.heading": "Det er mye trafikk akkurat nå",
        "wait.message": (
            "{school} har veldig mange besøkende akkurat nå. Du har fått plass i køen, "
            "og denne siden sender deg videre av seg selv når det er din tur."
        ),
        "wait.position_label": "Din plass i køen",
        "wait.eta_label": "Beregnet ventetid:",
        "wait.hint": "La denne siden være åpen. Den oppdaterer seg selv.",
        "wait.button": "Prøv nå",
        "wait.json": {
            "one": "{school} er full akkurat nå. Prøv igjen om {n} sekund.",
            "other": "{school} er full akkurat nå. Prøv igjen om {n} sekunder.",
        },
        "eta.unknown": "ikke kjent ennå",
        "eta.under_minute": "under ett minutt",
        "eta.minutes": {"one": "omtrent {n} minutt", "other": "omtrent {n} minutter"},
        "eta.hours": {"one": "omtrent {n} time", "other": "omtrent {n} timer"},
        "eta.over_hours": {"one": "mer enn {n} time", "other": "mer enn {n} timer"},
        "down.title": "{school} svarer ikke",
        "down.heading": "Skolens server svarer ikke",
        "down.message": (
            "{school} svarer ikke akkurat nå. Det er ikke noe galt med enheten "
            "eller nettforbindelsen din."
        ),
        "down.retry": {
            "one": "Vi prøver igjen om {n} sekund.",
            "other": "Vi prøver igjen om {n} sekunder.",
        },
        "down.button": "Prøv igjen nå",
        "down.json": {
            "one": "{school} svarer ikke. Prøv igjen om {n} sekund.",
            "other": "{school} svarer ikke. Prøv igjen om {n} sekunder.",
        },
        "resend.title": "Ikke sendt \u2013 {school}",
        "resend.wait": (
            "{school} har veldig mange besøkende akkurat nå, så det du sendte (et "
            "skjema, en innlogging eller en opplasting) ble ikke sendt videre. Skolens "
            "server har ikke mottatt det."
        ),
        "resend.down": (
            "{school} svarer ikke akkurat nå, så det du sendte (et skjema, en "
            "innlogging eller en opplasting) ble ikke sendt videre. Skolens server har "
            "ikke mottatt det."
        ),
        "resend.hint": (
            "Ingenting ble lagret. Gå tilbake med nettleserens tilbakeknapp og send det "
            "på nytt om litt."
        ),
        "resend.retry": {
            "one": "Vent omtrent {n} sekund først.",
            "other": "Vent omtrent {n} sekunder først.",
        },
        "resend.unknown": (
            "{school} sluttet å svare mens det du sendte (et skjema, en innlogging "
            "eller en opplasting) ble behandlet. Det kan hende at det likevel ble lagret."
        ),
        "resend.check": (
            "Sjekk om det kom fram før du sender det på nytt, for eksempel ved å åpne "
            "siden igjen om litt."
        ),
        "bulk.message": {
            "one": "For mange masseforespørsler til {school}. Prøv igjen om {n} sekund.",
            "other": "For mange masseforespørsler til {school}. Prøv igjen om {n} sekunder.",
        },
        "error.400": "Forespørselen kunne ikke forstås.",
        "error.408": "Forespørselen brukte for lang tid.",
        "error.413": "Forespørselen er for stor.",
        "error.414": "Adressen er for lang.",
        "error.431": "Hodefeltene i forespørselen er for store.",
        "error.501": "Denne typen forespørsel støttes ikke.",
        "error.505": "Denne HTTP-versjonen støttes ikke.",
        "error.client": "Forespørselen kunne ikke behandles.",
        "error.server": "Gatewayen kunne ikke behandle forespørselen.",
    },
}

LANGUAGES: Final = frozenset(CATALOGS)


def plural_category(lang: str, n: int) -> str:
    return _PLURAL_RULES[lang](n)


def text(lang: str, key: str, *, n: int = 0, school: str = "") -> str:
    """The message `key` in `lang`, formatted; falls back to English per key."""
    message = CATALOGS.get(lang, {}).get(key) or CATALOGS[DEFAULT_LANGUAGE][key]
    if isinstance(message, dict):
        if lang not in _PLURAL_RULES:
            lang = DEFAULT_LANGUAGE
        message = message.get(plural_category(lang, n)) or message["other"]
    # str.replace rather than str.format: a school name containing braces
    # must not be read as a format field.
    return message.replace("{n}", str(n)).replace("{school}", school)


def error_text(lang: str, status: int) -> str:
    """A one-line, non-technical explanation for a gateway error status."""
    key = f"error.{status}"
    if key in CATALOGS[DEFAULT_LANGUAGE]:
        return text(lang, key)
    return text(lang, "error.client" if status < 500 else "error.server")


# ETA wording. Coarser as waits grow: nobody plans around "about 37 minutes",
# and a number that jumps by one every poll feels less trustworthy than a
# stable "about 35 minutes". Each step is (upper bound in seconds, key, n);
# the page script receives the rendered steps so both sides round alike.
_UNDER_MINUTE = 45.0
_MINUTE_STEPS = range(1, 10)
_FIVE_MINUTE_STEPS = range(10, 60, 5)
_HOUR_STEPS = range(1, 4)


def _eta_steps() -> list[tuple[float, str, int]]:
    steps = [(_UNDER_MINUTE, "eta.under_minute", 0)]
    steps += [((m + 0.5) * 60, "eta.minutes", m) for m in _MINUTE_STEPS]
    steps += [((m + 2.5) * 60, "eta.minutes", m) for m in _FIVE_MINUTE_STEPS]
    steps += [((h + 0.5) * 3600, "eta.hours", h) for h in _HOUR_STEPS]
    return steps


_STEPS: Final = _eta_steps()
_LAST_HOURS: Final = _HOUR_STEPS[-1]


@cache
def eta_table(lang: str) -> tuple[tuple[tuple[float, str], ...], str]:
    """Rendered ETA steps for `lang` plus the wording beyond the last step."""
    rendered = tuple((bound, text(lang, key, n=n)) for bound, key, n in _STEPS)
    return rendered, text(lang, "eta.over_hours", n=_LAST_HOURS)


def eta_text(lang: str, eta: float | None) -> str:
    """Human wording for an estimated wait in seconds ("about 2 minutes")."""
    if eta is None or math.isnan(eta) or eta < 0:
        return text(lang, "eta.unknown")
    steps, beyond = eta_table(lang)
    for bound, wording in steps:
        if eta < bound:
            return wording
    return beyond


__all__ = [
    "CATALOGS", "DEFAULT_LANGUAGE", "LANGUAGES", "error_text", "eta_table", "eta_text",
    "plural_category", "text",
]
