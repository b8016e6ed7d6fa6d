"""Built-in tools-capable chat templates, for models whose GGUF template has no tool section although
their family has a known tool format (as Ollama's library templates give SmolLM2, Qwen, Llama 3.x,
Mistral and Gemma tools). Written for lokal in Jinja (rendered like any GGUF template) and used only for
requests that carry tools or tool messages, so other chats render exactly as the model's own template.

Each template shows the tools as JSON function signatures in the system turn, renders an assistant's
earlier calls in the format it asks for (see ``tool_calls.py``), and feeds tool results back in the
family's own way.
"""

from __future__ import annotations

from lokal.tool_calls import ToolFormat

# ChatML with Hermes-style tags (SmolLM2, Qwen 2/2.5, Hermes).
HERMES_TOOLS = (
    "{% set system = namespace(text='') %}"
    "{% for message in messages if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] + '\\n\\n' %}{% endfor %}"
    "{% if system.text or tools %}<|im_start|>system\n{{ system.text }}"
    "{% if tools %}You can call functions. Their signatures, one JSON object per line:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    "To call a function, answer with a JSON object holding its name and arguments inside "
    "<tool_call></tool_call> tags, one block per call:\n"
    "<tool_call>\n{\"name\": \"function name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>"
    "{% endif %}<|im_end|>\n{% endif %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "<tool_call>\n{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "\n</tool_call>{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Llama 3.1+ style: tools in the system turn, a call is the whole reply as JSON, results as "ipython".
LLAMA3_TOOLS = (
    "{{ bos_token }}{% set system = namespace(text='') %}"
    "{% for message in messages if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] + '\\n\\n' %}{% endfor %}"
    "<|start_header_id|>system<|end_header_id|>\n\n{{ system.text }}"
    "{% if tools %}You have access to the following functions. To call one, respond only with JSON of the "
    "form {\"name\": function name, \"parameters\": {argument name: value}}. Do not use variables.\n\n"
    "{% for tool in tools %}{{ tool | tojson }}\n\n{% endfor %}{% endif %}<|eot_id|>"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>"
    "{% elif message['tool_calls'] %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% for call in message['tool_calls'] %}"
    "{{ {'name': call['function']['name'], 'parameters': call['function']['arguments']} | tojson }}"
    "{% if not loop.last %}; {% endif %}{% endfor %}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Mistral v3 style: the tools just before the last user turn, calls after [TOOL_CALLS].
MISTRAL_TOOLS = (
    "{{ bos_token }}{% set system = namespace(text='', last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set system.text = system.text + message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}{% set system.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if tools and loop.index0 == system.last_user %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]"
    "{% endif %}[INST] {% if loop.index0 == system.last_user %}{{ system.text }}{% endif %}"
    "{{ message['content'] }}[/INST]"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['tool_calls'] %}[TOOL_CALLS] "
    "{{ message['tool_calls'] | map(attribute='function') | list | tojson }}"
    "{% else %}{{ message['content'] }}{% endif %}{{ eos_token }}"
    "{% elif message['role'] == 'tool' %}[TOOL_RESULTS] {{ {'content': message['content']} | tojson }}"
    "[/TOOL_RESULTS]{% endif %}{% endfor %}"
)

# Gemma's turns (no system role: system text and tools open the first user turn), Hermes-style tags.
GEMMA_TOOLS = (
    "{{ bos_token }}{% set state = namespace(system='') %}"
    "{% for message in messages if message['role'] == 'system' %}"
    "{% set state.system = state.system + (message['content'] | trim) + '\\n\\n' %}{% endfor %}"
    "{% if tools %}{% set state.system = state.system + 'You can call functions. Their signatures, one JSON "
    "object per line:\\n' %}{% for tool in tools %}{% set state.system = state.system + (tool | tojson) + '\\n' %}"
    "{% endfor %}{% set state.system = state.system + 'To call a function, answer only with a JSON object "
    "holding its name and arguments inside <tool_call></tool_call> tags:\\n<tool_call>\\n{\"name\": \"function "
    "name\", \"arguments\": {\"argument\": \"value\"}}\\n</tool_call>\\n\\n' %}{% endif %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'assistant' %}<start_of_turn>model\n{{ message['content'] | trim }}"
    "{% for call in message['tool_calls'] or [] %}<tool_call>\n"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "\n</tool_call>{% endfor %}<end_of_turn>\n"
    "{% else %}<start_of_turn>user\n{{ state.system }}{% set state.system = '' %}"
    "{% if message['role'] == 'tool' %}<tool_response>\n{{ message['content'] | trim }}\n</tool_response>"
    "{% else %}{{ message['content'] | trim }}{% endif %}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def builtin_tools_template(template_source: str, architecture: str | None) -> tuple[str, ToolFormat] | None:
    """The built-in tools template for a model whose own template (``template_source``) lacks tools, chosen
    by the family its markers (or, for Gemma, its architecture) show; None when the family is unknown."""
    if "<start_of_turn>" in template_source or (architecture or "").lower().startswith("gemma"):
        return GEMMA_TOOLS, "hermes"
    if "<|im_start|>" in template_source:
        return HERMES_TOOLS, "hermes"
    if "<|start_header_id|>" in template_source:
        return LLAMA3_TOOLS, "llama3"
    if "[INST]" in template_source:
        return MISTRAL_TOOLS, "mistral"
    return None
