"""Every error vhw reports to a person, and the exit code each one ends the command with.

This module imports nothing from the package, so every layer can raise these errors and the CLI
can turn any of them into one clear line and an exit code (pip's ``exceptions.py``, s3ql's
``QuietError``). Anything else that reaches the CLI is a bug.

    VhwError                       exit 1  base class: refuses to be raised itself
    ├── PathError                          an error about one file (never raised itself):
    │   ├── ImageError             exit 3  a device file is missing, foreign, truncated or tampered
    │   │   └── IntegrityError     exit 3  authenticated data failed its check (tag, signature, hash)
    │   │       └── saves.SaveInvalid exit 3  a save on a card does not verify
    │   └── FileError              exit 16 a file that is not a device (configuration, key,
    │                                      credential, backup, database, title source) is missing
    │                                      or not what vhw wrote
    ├── crypto.Invalid             exit 3  sealed data did not open (says no more: no file to name)
    ├── IdError                    exit 4  an ID is mistyped (check character) or of the wrong kind
    ├── NetworkError               exit 5  a server or database cannot be reached, or TLS refused it
    ├── ServerError                exit 6  the server refused a request (bad credential, bad input)
    │   └── RequestRefused         exit 6  the service's own refusals, by meaning (their HTTP
    │       ├── NotFound           exit 6  statuses are mapped in one place, vhw.httpapi):
    │       ├── AlreadyExists      exit 6  an ID unknown, known otherwise, a role's limit, a
    │       ├── Forbidden          exit 6  request that cannot be carried out, too many failed
    │       ├── Unprocessable      exit 6  User IDs for one card
    │       └── TooManyAttempts    exit 6
    ├── InUseError                 exit 7  another process holds the device's lock, or the port
    ├── NoSpaceError               exit 8  the HDD has no room for the title, or the host's disk is full
    │   └── stores.card.CardFull   exit 8  the memory card has no room for the save
    ├── StateError                 exit 9  the console is not in a state to do this (no disc, ...)
    ├── Refusal                            one of the patent's five messages (never raised itself),
    │   ├── RegistrationRefused    exit 10 USER REGISTRATION CANNOT BE COMPLETED WITH THIS MEMORY CARD
    │   ├── UserIdInvalid          exit 11 USER ID INVALID. PLEASE COMPLETE USER REGISTRATION.
    │   ├── MediaRefused           exit 12 CONTENT CANNOT BE COPIED FROM THIS MEDIA
    │   ├── CopyNotPermitted       exit 13 COPY IS NOT PERMITTED
    │   └── ReproductionNotPermitted exit 14 CONTENT REPRODUCTION IS NOT PERMITTED
    ├── PaymentDeclined            exit 15 the broker could not charge for a key
    ├── InputError                 exit 17 a name or value given is not allowed (a save's name)
    └── TitleEnded                 exit 18 the title played ended with a status of its own

A class named with a module (``crypto.Invalid``) lives in that module; the others here.
tests/test_errors.py checks that this tree is the package's: every subclass, with its exit code.

Refusals carry exactly the patent's text and nothing else: like Fernet's single ``InvalidToken``,
they never tell the caller which check failed. Other errors name the file or value at fault and,
where it helps, say what to do next (``hint``).
"""

from __future__ import annotations


class VhwError(Exception):
    """Base of every error meant for a person: a message, an optional hint, an exit code.

    Only its subclasses are raised (as h11's ``ProtocolError``): each says what kind of thing went
    wrong and so which exit code ends the command. The classes marked "never raised itself" in the
    tree above refuse it too."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        if type(self) in _ABSTRACT:
            raise TypeError(f"{type(self).__name__} is never raised itself: raise one of its subclasses")
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class PathError(VhwError):
    """An error about one file: it names the file (``path``) and what is wrong (``problem``)."""

    def __init__(self, path: object, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", hint=hint)
        self.path = path
        self.problem = problem


class ImageError(PathError):
    """A device file (ROM, card, HDD, disc, key store) cannot be used as what it claims to be."""

    exit_code = 3


class IntegrityError(ImageError):
    """Authenticated data did not verify: a tag, a signature, a checksum or a hash."""


class IdError(VhwError):
    """An ID typed from a label: its check character does not match, or it is of another kind."""

    exit_code = 4


class NetworkError(VhwError):
    """A server, broker or database did not answer (within the retry budget said), or its TLS
    certificate is not the platform's."""

    exit_code = 5


class ServerError(VhwError):
    exit_code = 6

    def __init__(self, message: str, *, status: int = 0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RequestRefused(ServerError):
    """The licensing service refused a request for a reason its caller can mend (raised by the
    service itself, which knows nothing of HTTP)."""


class NotFound(RequestRefused):
    """An ID or title the service does not know."""


class AlreadyExists(RequestRefused):
    """An ID or title the service knows already, otherwise."""


class Forbidden(RequestRefused):
    """Not this caller's to do (another publisher's title, say)."""


class Unprocessable(RequestRefused):
    """A well-formed request that cannot be carried out as asked."""


class TooManyAttempts(RequestRefused):
    """Too many failed attempts: wait."""


class InUseError(VhwError):
    """Another process holds the device's lock (it is named), or the port to listen on."""

    exit_code = 7


class NoSpaceError(VhwError):
    exit_code = 8


class StateError(VhwError):
    """The console, a device or a home is not in a state to do this: no disc in the tray, no
    card, not registered, a server home not set up."""

    exit_code = 9


class Refusal(VhwError):
    """One of the patent's notices of invalidity. The text is fixed; nothing is added to it. A
    hint (what the user can do, e.g. install again after a repair) goes on a line of its own,
    shown by the console only: the wire carries the notice alone."""

    text = ""
    code = ""  # stable machine name, used on the wire

    def __init__(self, *, hint: str | None = None) -> None:
        super().__init__(self.text, hint=hint)


class RegistrationRefused(Refusal):
    """S3-S5: the card is not one the platform made, the request does not prove it holds the
    card, a device is unknown or retired, or the devices belong to another user's entry."""

    exit_code = 10
    code = "registration-refused"
    text = "USER REGISTRATION CANNOT BE COMPLETED WITH THIS MEMORY CARD"


class UserIdInvalid(Refusal):
    """S13 (and S22, S33 at the console): the User ID does not open, or the card and devices are
    not the user entry's."""

    exit_code = 11
    code = "user-id-invalid"
    text = "USER ID INVALID. PLEASE COMPLETE USER REGISTRATION."


class MediaRefused(Refusal):
    """S14, S17: a MID no publisher pressed, one another user flagged, or a disc that does not
    prove its own secret."""

    exit_code = 12
    code = "media-refused"
    text = "CONTENT CANNOT BE COPIED FROM THIS MEDIA"


class CopyNotPermitted(Refusal):
    """S21-S23: the keys on the card are not for this console and HDD."""

    exit_code = 13
    code = "copy-not-permitted"
    text = "COPY IS NOT PERMITTED"


class ReproductionNotPermitted(Refusal):
    """S31-S34: the title on the HDD does not open with this card on this console."""

    exit_code = 14
    code = "reproduction-not-permitted"
    text = "CONTENT REPRODUCTION IS NOT PERMITTED"


class PaymentDeclined(VhwError):
    exit_code = 15


class FileError(PathError):
    """A file vhw keeps or reads that is not a device file: a configuration, key, credential,
    backup, database or title source. Names the file and what is wrong, like :class:`ImageError`."""

    exit_code = 16


class InputError(VhwError):
    """A name or value given on the command line or by a title is not allowed."""

    exit_code = 17


class TitleEnded(VhwError):
    """The title that `vhw console play` ran ended with a non-zero status of its own (an unfinished
    game, say, or a title that failed): not vhw's error, but not a success either."""

    exit_code = 18


#: Bases that say too little to be raised: each refuses to be instantiated itself.
_ABSTRACT: frozenset[type[VhwError]] = frozenset({VhwError, PathError, Refusal})

REFUSALS: dict[str, type[Refusal]] = {
    cls.code: cls
    for cls in (
        RegistrationRefused,
        UserIdInvalid,
        MediaRefused,
        CopyNotPermitted,
        ReproductionNotPermitted,
    )
}

#: Exit codes as the README and ``vhw --help`` document them.
EXIT_CODES: list[tuple[int, str]] = [
    (0, "success"),
    (1, "internal error (a bug: please report it)"),
    (2, "usage error (wrong option or argument)"),
    (ImageError.exit_code, "a device file is missing, foreign, truncated or tampered"),
    (IdError.exit_code, "an ID is mistyped or of the wrong kind"),
    (NetworkError.exit_code, "a server or its database cannot be reached, or its certificate is not trusted"),
    (ServerError.exit_code, "the server refused the request (credential, input)"),
    (InUseError.exit_code, "a device, or the port to listen on, is in use by another process"),
    (NoSpaceError.exit_code, "not enough space on the HDD, or on the host's disk"),
    (StateError.exit_code, "the console is not set up for this (no disc, no card, ...)"),
    *((cls.exit_code, cls.text) for cls in REFUSALS.values()),
    (PaymentDeclined.exit_code, "the payment for a key was declined"),
    (FileError.exit_code, "a configuration, key, credential, backup or title source file is missing or wrong"),
    (InputError.exit_code, "a name or value given is not allowed"),
    (TitleEnded.exit_code, "the title played ended with a non-zero status of its own (an unfinished game)"),
    (130, "interrupted (Ctrl-C), or a question was not answered"),
    (141, "the output was closed before vhw finished writing it (a pipe)"),
]
