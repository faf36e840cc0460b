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

    # What LoRA Studio's cards page uses of AUTOMATIC1111's page (v1.10.1 names; simple stand-ins).
    items: dict

    def find_preview(self, path):
        return None

    def find_description(self, path):
        return None

    def search_terms_from_path(self, filename):
        return filename

    def get_sort_keys(self, path):
        return {"name": path.lower()}

    def read_user_metadata(self, item, use_cache=True):
        import json
        import os
        path = os.path.splitext(item["filename"])[0] + ".json"
        item["user_metadata"] = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}

    def create_item_into_items(self, name):
        self.items = getattr(self, "items", {})
        item = self.create_item(name)
        self.items[name] = item
        return item
