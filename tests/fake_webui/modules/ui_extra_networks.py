extra_pages = []


def register_page(page):
    extra_pages.append(page)


def initialize():
    extra_pages.clear()


def quote_js(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ExtraNetworksPage:
    def __init__(self, title):
        self.title = title
        self.name = title.lower()

