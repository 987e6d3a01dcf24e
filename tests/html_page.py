"""What a browser would show of an HTML page: its tags and its text (for the report tests)."""

from html.parser import HTMLParser


class Page(HTMLParser):
    """Collects the tags and the text a browser would show."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)
