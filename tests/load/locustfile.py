"""Locust scenarios for the Conduit API (`/api/v1`), against a database filled by `conduit seed`.

    conduit seed --users 10000 --articles 100000
    locust -f tests/load/locustfile.py --headless -u 500 -r 50 -t 2m --host http://127.0.0.1:8000

Four kinds of visitors (docs/load-testing.md says more):

- Reader (anonymous): lists articles (pages, by tag, by author), opens an article and its
  comments, the tag cloud, a profile.
- Member (signed in once as a seeded `userN@example.com`): feed, reads, favorite/unfavorite,
  comments (deletes its older ones), follow/unfollow.
- Author (signed in once): creates, edits and deletes its own articles (titled "Load test
  draft ..." so that nobody else opens one that is about to go); deletes what is left at the end.
- Integration: a member creates an API client once (`POST /clients`, scope `articles:read`), gets
  tokens by OAuth client credentials (`POST /oauth/token`), reads articles with
  `Authorization: Bearer`, and deletes the client when it stops.

Every answer outside 2xx is a failure, 429 included: run the server with the rate limits raised.
Requests are named by route (`/api/v1/articles/[slug]`), so the statistics group by endpoint.

Environment variables (all optional):

    LOAD_USERS=10000          seeded users to sign in as (user1..userN): at most what was seeded
    LOAD_PASSWORD=password123 their password (`conduit seed --password`)
    LOAD_CLASSES=reader,member,author,integration   which visitor kinds run
    LOAD_READER_WEIGHT=60, LOAD_MEMBER_WEIGHT=25, LOAD_AUTHOR_WEIGHT=10,
    LOAD_INTEGRATION_WEIGHT=5 relative shares of the simulated users (0 leaves a kind out)
    LOAD_READER_WAIT=2-8, LOAD_MEMBER_WAIT=3-10, LOAD_AUTHOR_WAIT=5-15,
    LOAD_INTEGRATION_WAIT=1-3 think time between two actions, seconds "min-max"
    LOAD_THINK_SCALE=1        multiplies every think time (0.1: a quick, dense run)
    LOAD_PAGES=5              readers page through at most this many list pages
    LOAD_DRAFTS=3             an author deletes its oldest draft beyond this many
    LOAD_CLIENT_SCOPES=articles:read   scopes of the integrations' API clients (space-separated)
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import deque
from typing import Any

from locust import HttpUser, between, task
from locust.exception import StopUser

API = "/api/v1"
DRAFT_TITLE = "Load test draft"
DRAFT_SLUG_PREFIX = "load-test-draft"
_WORD_TEXT = (
    "cache latency queue thread event loop index query replica shard token scope client "
    "server proxy header body stream socket buffer pool lock retry budget signal metric trace"
)
_WORDS = _WORD_TEXT.split()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}") from None
    if number < 0:
        raise SystemExit(f"{name} must not be negative")
    return number


def _env_wait(name: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = os.environ.get(name, "").strip()
    low, high = default
    if raw:
        try:
            low, high = (float(part) for part in raw.split("-", 1))
        except ValueError:
            raise SystemExit(f"{name} must be 'min-max' seconds, e.g. 2-8, not {raw!r}") from None
    try:
        scale = float(os.environ.get("LOAD_THINK_SCALE", "") or 1)
    except ValueError:
        raise SystemExit("LOAD_THINK_SCALE must be a number") from None
    if not 0 <= low <= high or scale < 0:
        raise SystemExit(f"{name}: need 0 <= min <= max and LOAD_THINK_SCALE >= 0")
    return low * scale, high * scale


SEEDED_USERS = max(1, _env_int("LOAD_USERS", 10_000))
PASSWORD = os.environ.get("LOAD_PASSWORD", "password123")
PAGES = max(1, _env_int("LOAD_PAGES", 5))
DRAFTS = _env_int("LOAD_DRAFTS", 3)
CLIENT_SCOPES = os.environ.get("LOAD_CLIENT_SCOPES", "articles:read").split()
CLASSES = {
    name.strip().lower()
    for name in os.environ.get("LOAD_CLASSES", "reader,member,author,integration").split(",")
    if name.strip()
}

# What the visitors have seen, shared by all of them (one process, cooperative greenlets):
# slugs of articles nobody deletes, tags, usernames.
_slugs: deque[str] = deque(maxlen=5_000)
_tags: list[str] = []
_usernames: deque[str] = deque(maxlen=2_000)
_sequence = itertools.count(1)
_PLACEHOLDERS = {"author": "username", "favorited": "username"}


def _learn(articles: list[dict[str, Any]]) -> None:
    for article in articles:
        slug = article.get("slug")
        if isinstance(slug, str) and not slug.startswith(DRAFT_SLUG_PREFIX):
            _slugs.append(slug)
        author = article.get("author") or {}
        if isinstance(author.get("username"), str):
            _usernames.append(author["username"])


def _sentence(low: int = 6, high: int = 16) -> str:
    words = " ".join(random.choices(_WORDS, k=random.randint(low, high)))
    return words.capitalize() + "."


def _paragraphs(count: int) -> str:
    return "\n\n".join(
        " ".join(_sentence() for _ in range(random.randint(3, 6))) for _ in range(count)
    )


class ConduitUser(HttpUser):
    """Shared helpers: JSON reads that feed the shared pools, sign-in."""

    abstract = True
    headers: dict[str, str]

    def on_start(self) -> None:
        self.headers = {}
        if not _slugs:
            self.list_articles()

    def get_json(self, path: str, name: str, **params: Any) -> dict[str, Any] | None:
        """GET `path`; a 2xx answer that is not JSON counts as a failure too."""
        with self.client.get(
            path, params=params or None, headers=self.headers, name=name, catch_response=True
        ) as response:
            if not response.ok:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            try:
                body: dict[str, Any] = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return None
            return body

    def list_articles(self, **filters: str) -> None:
        """A page of the global list, optionally filtered (`tag`, `author`, `favorited`)."""
        params: dict[str, Any] = {"limit": 20, "offset": 20 * self.page(), **filters}
        # Placeholders name what the value is: ?tag=[tag], ?author=[username].
        suffix = "&".join(f"{key}=[{_PLACEHOLDERS.get(key, key)}]" for key in filters)
        name = f"{API}/articles" + (f"?{suffix}" if suffix else "")
        body = self.get_json(f"{API}/articles", name, **params)
        if body is not None:
            _learn(body.get("articles", []))

    def page(self) -> int:
        # Most visitors stay on the first page; a few dig deeper.
        return min(PAGES - 1, int(random.expovariate(1.5)))

    def read_article(self) -> None:
        """An article, then its comments (as a browser would load them)."""
        if not _slugs:
            self.list_articles()
            return
        slug = random.choice(_slugs)
        body = self.get_json(f"{API}/articles/{slug}", f"{API}/articles/[slug]")
        if body is not None:
            self.get_json(f"{API}/articles/{slug}/comments", f"{API}/articles/[slug]/comments")

    def load_tags(self) -> None:
        body = self.get_json(f"{API}/tags", f"{API}/tags")
        if body is not None and body.get("tags"):
            _tags[:] = body["tags"]

    def sign_in(self) -> int:
        """Log in as a random seeded user; stop this visitor if that fails."""
        number = random.randint(1, SEEDED_USERS)
        self.username = f"user{number}"
        with self.client.post(
            f"{API}/users/login",
            json={"user": {"email": f"user{number}@example.com", "password": PASSWORD}},
            name=f"{API}/users/login",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(
                    f"login as user{number} failed ({response.status_code}): was the database "
                    "seeded with `conduit seed`, LOAD_USERS and LOAD_PASSWORD matching it?"
                )
                raise StopUser
            token = response.json()["user"]["token"]
        self.headers = {"Authorization": f"Token {token}"}
        return number


class Reader(ConduitUser):
    """Anonymous visitor: browses lists, tags, articles and comments."""

    weight = _env_int("LOAD_READER_WEIGHT", 60)
    wait_time = between(*_env_wait("LOAD_READER_WAIT", (2, 8)))

    @task(10)
    def front_page(self) -> None:
        self.list_articles()

    @task(5)
    def by_tag(self) -> None:
        if not _tags:
            self.load_tags()
        if _tags:
            self.list_articles(tag=random.choice(_tags))

    @task(2)
    def by_author(self) -> None:
        if _usernames:
            self.list_articles(author=random.choice(_usernames))

    @task(8)
    def article(self) -> None:
        self.read_article()

    @task(3)
    def tags(self) -> None:
        self.load_tags()

    @task(2)
    def profile(self) -> None:
        if _usernames:
            name = random.choice(_usernames)
            self.get_json(f"{API}/profiles/{name}", f"{API}/profiles/[username]")


class Member(ConduitUser):
    """Signed-in reader: feed, favorites, comments, follows."""

    weight = _env_int("LOAD_MEMBER_WEIGHT", 25)
    wait_time = between(*_env_wait("LOAD_MEMBER_WAIT", (3, 10)))

    def on_start(self) -> None:
        super().on_start()
        self.number = self.sign_in()
        self.favorited: list[str] = []
        self.followed: list[str] = []
        self.comments: deque[tuple[str, int]] = deque()

    @task(8)
    def feed(self) -> None:
        limit = 10
        body = self.get_json(f"{API}/articles/feed", f"{API}/articles/feed", limit=limit, offset=0)
        if body is not None:
            _learn(body.get("articles", []))

    @task(4)
    def front_page(self) -> None:
        self.list_articles()

    @task(6)
    def article(self) -> None:
        self.read_article()

    @task(1)
    def me(self) -> None:
        self.get_json(f"{API}/user", f"{API}/user")

    @task(3)
    def favorite(self) -> None:
        if self.favorited and (random.random() < 0.4 or len(self.favorited) > 20):
            slug = self.favorited.pop(random.randrange(len(self.favorited)))
            self.client.delete(
                f"{API}/articles/{slug}/favorite",
                headers=self.headers,
                name=f"{API}/articles/[slug]/favorite",
            )
        elif _slugs:
            slug = random.choice(_slugs)
            response = self.client.post(
                f"{API}/articles/{slug}/favorite",
                headers=self.headers,
                name=f"{API}/articles/[slug]/favorite",
            )
            if response.ok and slug not in self.favorited:
                self.favorited.append(slug)

    @task(2)
    def comment(self) -> None:
        if not _slugs:
            return
        slug = random.choice(_slugs)
        response = self.client.post(
            f"{API}/articles/{slug}/comments",
            json={"comment": {"body": _sentence(8, 30)}},
            headers=self.headers,
            name=f"{API}/articles/[slug]/comments",
        )
        if response.ok:
            self.comments.append((slug, response.json()["comment"]["id"]))
        if len(self.comments) > 5:
            old_slug, comment_id = self.comments.popleft()
            self.client.delete(
                f"{API}/articles/{old_slug}/comments/{comment_id}",
                headers=self.headers,
                name=f"{API}/articles/[slug]/comments/[id]",
            )

    @task(2)
    def follow(self) -> None:
        if self.followed and (random.random() < 0.4 or len(self.followed) > 20):
            name = self.followed.pop(random.randrange(len(self.followed)))
            self.client.delete(
                f"{API}/profiles/{name}/follow",
                headers=self.headers,
                name=f"{API}/profiles/[username]/follow",
            )
            return
        candidates = [name for name in _usernames if name != self.username]
        if not candidates:
            return
        name = random.choice(candidates)
        response = self.client.post(
            f"{API}/profiles/{name}/follow",
            headers=self.headers,
            name=f"{API}/profiles/[username]/follow",
        )
        if response.ok and name not in self.followed:
            self.followed.append(name)


class Author(ConduitUser):
    """Signed-in writer: creates, edits and deletes its own articles."""

    weight = _env_int("LOAD_AUTHOR_WEIGHT", 10)
    wait_time = between(*_env_wait("LOAD_AUTHOR_WAIT", (5, 15)))

    def on_start(self) -> None:
        super().on_start()
        self.sign_in()
        self.drafts: deque[str] = deque()
        if not _tags:
            self.load_tags()

    def on_stop(self) -> None:
        while self.drafts:
            self.delete_draft()

    @task(3)
    def create(self) -> None:
        words = " ".join(random.choices(_WORDS, k=random.randint(2, 6)))
        title = f"{DRAFT_TITLE} {words} {next(_sequence)}"
        tags = random.sample(_tags, k=min(len(_tags), random.randint(0, 4)))
        response = self.client.post(
            f"{API}/articles",
            json={
                "article": {
                    "title": title,
                    "description": _sentence(),
                    "body": _paragraphs(random.randint(2, 6)),
                    "tagList": tags,
                }
            },
            headers=self.headers,
            name=f"{API}/articles",
        )
        if response.ok:
            self.drafts.append(response.json()["article"]["slug"])
        while len(self.drafts) > DRAFTS:
            self.delete_draft()

    @task(3)
    def edit(self) -> None:
        if not self.drafts:
            return
        slug = random.choice(self.drafts)
        change: dict[str, Any] = {"body": _paragraphs(random.randint(2, 6))}
        if random.random() < 0.3:
            change["description"] = _sentence()
        self.client.put(
            f"{API}/articles/{slug}",
            json={"article": change},
            headers=self.headers,
            name=f"{API}/articles/[slug]",
        )

    @task(2)
    def own_articles(self) -> None:
        self.list_articles(author=self.username)

    @task(1)
    def delete(self) -> None:
        if self.drafts:
            self.delete_draft()

    def delete_draft(self) -> None:
        slug = self.drafts.popleft()
        self.client.delete(
            f"{API}/articles/{slug}", headers=self.headers, name=f"{API}/articles/[slug]"
        )


class Integration(ConduitUser):
    """A third-party service: OAuth client credentials, then Bearer reads."""

    weight = _env_int("LOAD_INTEGRATION_WEIGHT", 5)
    wait_time = between(*_env_wait("LOAD_INTEGRATION_WAIT", (1, 3)))

    def on_start(self) -> None:
        self.headers = {}
        number = self.sign_in()
        with self.client.post(
            f"{API}/clients",
            json={"client": {"name": f"load test user{number}", "scopes": CLIENT_SCOPES}},
            headers=self.headers,
            name=f"{API}/clients",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"creating an API client failed ({response.status_code})")
                raise StopUser
            client = response.json()["client"]
        self.member_headers = self.headers
        self.credentials = (client["clientId"], client["clientSecret"])
        self.headers = {}
        self.token_expires = 0.0
        self.fetch_token()

    def on_stop(self) -> None:
        # Users may own only so many clients: leave none behind.
        if hasattr(self, "credentials"):
            self.client.delete(
                f"{API}/clients/{self.credentials[0]}",
                headers=self.member_headers,
                name=f"{API}/clients/[clientId]",
            )

    def fetch_token(self) -> None:
        """A client-credentials access token (RFC 6749 section 4.4)."""
        with self.client.post(
            f"{API}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=self.credentials,
            name=f"{API}/oauth/token",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"token request failed ({response.status_code})")
                raise StopUser
            grant = response.json()
        self.headers = {"Authorization": f"Bearer {grant['access_token']}"}
        # Renewed a little before it expires, as a well-behaved client does.
        self.token_expires = time.monotonic() + max(10, int(grant.get("expires_in", 300)) - 30)

    def fresh_token(self) -> None:
        if time.monotonic() >= self.token_expires:
            self.fetch_token()

    @task(6)
    def list_articles_task(self) -> None:
        self.fresh_token()
        self.list_articles()

    @task(3)
    def by_tag(self) -> None:
        self.fresh_token()
        if _tags:
            self.list_articles(tag=random.choice(_tags[:20]))

    @task(4)
    def article(self) -> None:
        self.fresh_token()
        if not _slugs:
            self.list_articles()
            return
        slug = random.choice(_slugs)
        self.get_json(f"{API}/articles/{slug}", f"{API}/articles/[slug]")


def _select_classes() -> None:
    """Make the visitor kinds not asked for abstract: Locust runs only concrete classes."""
    kinds = {"reader": Reader, "member": Member, "author": Author, "integration": Integration}
    if unknown := CLASSES - kinds.keys():
        raise SystemExit(f"LOAD_CLASSES: unknown {sorted(unknown)}; known: {sorted(kinds)}")
    # In a function: a module-level name bound to a class would be found as one more User.
    for name, user_class in kinds.items():
        user_class.abstract = name not in CLASSES or user_class.weight == 0


_select_classes()
