"""HTML pages of the demo school platform.

Plain functions from a few values to a UTF-8 page, every value escaped; no
template engine, so the demo upstream needs nothing beyond httptools.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2a35}
header{background:#245c7a;color:#fff;padding:1rem 2rem}
header h1{margin:0;font-size:1.4rem}header p{margin:.2rem 0 0;opacity:.8;font-size:.9rem}
main{max-width:46rem;margin:1.5rem auto;padding:0 1rem}
.card{background:#fff;border-radius:8px;padding:1rem 1.5rem;margin-bottom:1rem;
box-shadow:0 1px 3px rgba(0,0,0,.1)}
a{color:#245c7a}li{margin:.3rem 0}code{background:#eef1f4;padding:0 .25rem;border-radius:3px}
input,button{font:inherit;padding:.3rem .6rem}.error{color:#a4262c}
"""


def _layout(title: str, school_title: str, served_by: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{escape(title)} - {escape(school_title)}</title><style>{_STYLE}</style>"
        f"</head><body><header><h1>{escape(school_title)}</h1>"
        f"<p>demo school platform, served by {escape(served_by)}</p></header>"
        f"<main>{body}</main></body></html>\n"
    ).encode()


def start_page(school_title: str, served_by: str) -> bytes:
    """The start page: what each demo endpoint stands for, with links."""
    body = """
<div class="card"><h2>Welcome!</h2>
<p>This is a pretend school platform behind <b>schoolgate</b>. Every link below is
a kind of traffic the gateway tells apart and admits by priority.</p></div>
<div class="card"><h2>Pages</h2><ul>
<li><a href="/login">Log in</a> - a form; logging in is interactive traffic.</li>
<li><a href="/lesson/join?room=7b-maths">Join the 7b maths lesson</a> - must stay fast.</li>
<li><a href="/upload">Hand in homework</a> - uploads of any size; the reply gives
the byte count and SHA-256 the server saw.</li>
<li><a href="/api/import">Bulk import</a> - a slow admin job (2 s); the gateway
keeps it from crowding out lessons.</li>
<li><a href="/slow?ms=3000">A slow page</a> (<code>/slow?ms=N</code>).</li>
<li><a href="/big?bytes=10485760">Download 10 MiB</a> (<code>/big?bytes=N</code>).</li>
<li><a href="/health">Health check</a> (JSON).</li>
</ul></div>"""
    return _layout("Start", school_title, served_by, body)


def login_page(school_title: str, served_by: str, error: str = "") -> bytes:
    """The login form; ``error`` is shown above it after a bad attempt."""
    notice = f'<p class="error">{escape(error)}</p>' if error else ""
    body = f"""
<div class="card"><h2>Log in</h2>{notice}
<form method="post" action="/login">
<p><label>Name <input name="user" autocomplete="username" required></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><button>Log in</button></p></form>
<p><a href="/">Back to the start page</a></p></div>"""
    return _layout("Log in", school_title, served_by, body)


def welcome_page(school_title: str, served_by: str, user: str) -> bytes:
    body = f"""
<div class="card"><h2>Hello, {escape(user)}!</h2>
<p>You are logged in. Your next lesson is waiting:
<a href="/lesson/join?room=7b-maths">join 7b maths</a>.</p></div>"""
    return _layout("Welcome", school_title, served_by, body)


def upload_page(school_title: str, served_by: str) -> bytes:
    body = """
<div class="card"><h2>Hand in homework</h2>
<form method="post" action="/upload" enctype="multipart/form-data">
<p><input type="file" name="homework"></p><p><button>Upload</button></p></form>
<p>Or from a shell: <code>curl -T file http://&lt;school&gt;.localhost:8080/upload</code></p>
<p><a href="/">Back to the start page</a></p></div>"""
    return _layout("Upload", school_title, served_by, body)


def lesson_page(school_title: str, served_by: str, room: str) -> bytes:
    body = f"""
<div class="card"><h2>Lesson {escape(room)}</h2>
<p>You joined the lesson. The teacher can see you now.</p>
<p><a href="/">Leave the lesson</a></p></div>"""
    return _layout(f"Lesson {room}", school_title, served_by, body)


def error_page(school_title: str, served_by: str, status: int, reason: str,
               detail: str) -> bytes:
    body = f"""
<div class="card"><h2>{status} {escape(reason)}</h2><p>{escape(detail)}</p>
<p><a href="/">Back to the start page</a></p></div>"""
    return _layout(reason, school_title, served_by, body)
