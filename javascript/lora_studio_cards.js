// LoRA Studio: "add to prompt" for the training tags shown in a LoRA card's metadata editor
// (lora_studio_webui/cards.py). A tag button carries data-tag; its panel names the tab (txt2img/img2img)
// whose prompt receives the tag, through updateInput so Gradio sees the change.
(function() {
    function addTag(textarea, tag) {
        var text = textarea.value.replace(/\s+$/, '');
        var parts = text.split(',').map(function(s) { return s.trim(); });
        if (parts.indexOf(tag) >= 0) return false;     // already there: nothing repeated
        textarea.value = text ? text + ', ' + tag : tag;
        if (typeof updateInput === 'function') updateInput(textarea);
        return true;
    }

    document.addEventListener('click', function(ev) {
        var btn = ev.target.closest ? ev.target.closest('button.lora-studio-tag') : null;
        if (!btn) return;
        var panel = btn.closest('.lora-studio-card-meta');
        var tab = panel ? panel.dataset.tabname : 'txt2img';
        var ta = document.querySelector('#' + tab + '_prompt textarea');
        if (!ta) return;
        if (addTag(ta, btn.dataset.tag)) btn.classList.add('lora-studio-tag-added');
    });

    window.loraStudioCards = {addTag: addTag};
})();
