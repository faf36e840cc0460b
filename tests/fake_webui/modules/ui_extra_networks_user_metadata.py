"""Stand-in for the WebUI's user-metadata editor base: the fields and the methods LoRA Studio's card editor
builds on (item['user_metadata'] as the sidecar read; the five default values of put_values_into_components)."""

import html


class UserMetadataEditor:
    def __init__(self, ui, tabname, page):
        self.ui, self.tabname, self.page = ui, tabname, page
        self.id_part = f"{tabname}_{page.extra_networks_tabname}_edit_user_metadata"
        self.box = self.edit_name_input = self.button_edit = self.edit_name = None
        self.edit_description = self.edit_notes = self.html_filedata = self.html_preview = None
        self.html_status = self.button_cancel = self.button_replace_preview = self.button_save = None

    def get_user_metadata(self, name):
        item = self.page.items.get(name, {})
        um = item.get("user_metadata") or {"description": item.get("description", "")}
        item["user_metadata"] = um
        return um

    def create_default_editor_elems(self):
        import gradio as gr
        self.edit_name = gr.HTML()
        self.edit_description = gr.Textbox(label="Description")
        self.html_filedata = gr.HTML()
        self.html_preview = gr.HTML()

    def create_default_buttons(self):
        import gradio as gr
        self.button_cancel = gr.Button("Cancel")
        self.button_replace_preview = gr.Button("Replace preview")
        self.button_save = gr.Button("Save")
        self.html_status = gr.HTML()

    def put_values_into_components(self, name):
        um = self.get_user_metadata(name)
        return html.escape(name), um.get("description", ""), "<table></table>", "<div></div>", um.get("notes", "")

    def create_ui(self):
        import gradio as gr
        with gr.Box(visible=False) as box:
            self.box = box
            self.edit_name_input = gr.Textbox(visible=False)
            self.button_edit = gr.Button(visible=False)
            self.create_editor()
