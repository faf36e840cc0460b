"""Stand-in for AUTOMATIC1111's card metadata editor base class: the attributes and methods a subclass uses
(v1.10.1 names), with real Gradio components."""

import gradio as gr


class UserMetadataEditor:
    def __init__(self, ui, tabname, page):
        self.ui, self.tabname, self.page = ui, tabname, page
        self.box = self.edit_name_input = self.button_edit = None

    def get_user_metadata(self, name):
        item = self.page.items.get(name, {})
        if not item.get("user_metadata"):
            item["user_metadata"] = {"description": item.get("description", "")}
        return item["user_metadata"]

    def create_default_editor_elems(self):
        self.edit_name = gr.HTML()
        self.edit_description = gr.Textbox(label="Description", lines=4)
        self.html_filedata = gr.HTML()
        self.html_preview = gr.HTML()

    def create_default_buttons(self):
        self.button_save = gr.Button("Save")
        self.html_status = gr.HTML()

    def get_metadata_table(self, name):
        return [("Filename: ", self.page.items.get(name, {}).get("filename"))]

    def put_values_into_components(self, name):
        um = self.get_user_metadata(name)
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in self.get_metadata_table(name))
        return name, um.get("description", ""), table, "", um.get("notes", "")

    def setup_save_handler(self, button, func, components):
        button.click(fn=func, inputs=[self.edit_name_input, *components], outputs=[])

    def create_ui(self):
        with gr.Box(visible=False) as box:
            self.box = box
            self.edit_name_input = gr.Textbox(visible=False)
            self.button_edit = gr.Button(visible=False)
            self.create_editor()
