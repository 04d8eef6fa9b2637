"""A small multilingual sample: the export quality gate's texts, also used by tests and benchmarks.

English, Korean, Japanese and Portuguese (the corpus languages), plus a few Chinese and German
texts; lengths run from three-word queries to two paragraphs of about 200 tokens, because
quantisation errors show first on long inputs and on scripts the vocabulary covers badly.
"""

from __future__ import annotations

from typing import Any

SAMPLE_TEXTS: tuple[str, ...] = (
    # English
    "How do I reset my password?",
    "best hiking trails near the coast",
    "The quarterly report shows revenue grew by twelve percent while costs stayed flat.",
    "A cat sat on the warm windowsill, watching the rain fall on the empty street below.",
    "To install the package, create a virtual environment and run pip install with the cpu extra.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The museum opens at nine on weekdays and at ten on weekends; tickets are cheaper online.",
    "Error: connection refused when the worker tried to reach the broker on port 6379.",
    "She finished the marathon in under four hours despite the heat and a sore knee.",
    "What is the difference between a process and a thread in an operating system?",
    (
        "The city council met on Tuesday evening to discuss the new transport plan. After a long "
        "debate, the members agreed to extend two tram lines to the northern suburbs, to add "
        "protected bicycle lanes along the river, and to lower fares for students and retired "
        "residents. Critics argued that the budget did not include enough money for maintenance "
        "of the existing network, which has suffered repeated breakdowns over the past winter. "
        "Supporters replied that the extension would reduce car traffic in the centre, improve "
        "air quality near schools, and shorten commuting times for thousands of workers who now "
        "spend more than an hour on crowded buses every morning. The plan will be reviewed again "
        "in the spring, when the engineers present detailed cost estimates, a timetable for the "
        "construction works and a study of how the changes would affect small shops along the "
        "routes. Residents can send written comments to the council until the end of March."
    ),
    # Korean
    "비밀번호를 잊어버렸어요",
    "서울에서 부산까지 기차로 얼마나 걸리나요?",
    "오늘 회의는 오후 세 시에 시작하며 모든 팀원이 참석해야 합니다.",
    "이 모델은 100개 이상의 언어를 지원하며 최대 8192 토큰까지 처리할 수 있습니다.",
    "주말에는 가족과 함께 한강 공원에서 자전거를 타고 치킨을 먹었다.",
    "데이터베이스 연결이 끊어지면 작업자는 자동으로 다시 연결을 시도합니다.",
    "한국어 문장 임베딩의 품질은 토크나이저가 단어를 얼마나 잘 나누는지에 크게 좌우된다.",
    (
        "지난 겨울 동안 도시의 대중교통은 잦은 고장으로 많은 불편을 겪었다. "
        "시의회는 화요일 저녁 회의를 열어 새로운 교통 계획을 논의했고, "
        "오랜 토론 끝에 북부 교외 지역까지 전철 노선 두 개를 "
        "연장하고 강변을 따라 자전거 전용 도로를 만들기로 합의했다. "
        "또한 학생과 노인의 요금을 낮추는 "
        "방안도 함께 통과되었다. 반대하는 의원들은 기존 노선의 유지 보수 예산이 충분하지 않다고 "
        "지적했지만, 찬성하는 쪽은 도심의 자동차 통행이 줄고 "
        "학교 주변의 공기가 깨끗해질 것이라고 답했다."
    ),
    "임베딩 벡터를 정규화하면 코사인 유사도와 내적이 같아집니다.",
    # Japanese
    "パスワードを忘れました",
    "東京駅から京都までの新幹線の料金はいくらですか？",
    "今日は朝から雨が降っていたので、一日中家で本を読んでいました。",
    "このAPIは日本語の文章を高速にベクトルへ変換します。",
    "猫が窓辺で丸くなって、静かに外の景色を眺めている。",
    "サーバーが応答しない場合は、ログを確認してから再起動してください。",
    "富士山は日本で最も高い山で、標高は三千七百七十六メートルです。",
    (
        "新しい交通計画について、市議会は火曜日の夜に長い議論を行った。最終的に、北部の郊外まで"
        "路面電車の路線を二本延長し、川沿いに自転車専用レーンを整備することが決まった。学生と高齢者の"
        "運賃を引き下げる案も可決された。一方で、既存の路線の保守費用が十分ではないという批判もあり、"
        "春には技術者による詳細な費用の見積もりと工事の日程が示される予定である。"
    ),
    "量子化したモデルでも、元のモデルとほぼ同じ埋め込みが得られることを確認する必要がある。",
    # Portuguese
    "Como faço para redefinir minha senha?",
    "melhores praias do litoral norte de São Paulo",
    "O relatório trimestral mostra que a receita cresceu doze por cento.",
    "A reunião foi adiada para a próxima semana por causa da greve dos transportes.",
    "O serviço de embeddings volta para o backend de hashing se o ONNX não estiver disponível.",
    "Ela terminou a maratona em menos de quatro horas, apesar do calor intenso.",
    "Qual é a diferença entre um processo e uma thread em um sistema operacional?",
    (
        "A câmara municipal reuniu-se na terça-feira à noite para discutir o novo plano de "
        "transportes. Depois de um longo debate, os vereadores concordaram em prolongar duas "
        "linhas de elétrico até aos subúrbios do norte, criar ciclovias protegidas ao longo do "
        "rio e baixar "
        "as tarifas para estudantes e reformados. Os críticos disseram que o orçamento não inclui "
        "dinheiro suficiente para a manutenção da rede existente, que sofreu avarias repetidas "
        "durante o inverno. Os defensores responderam que a extensão reduziria o trânsito no "
        "centro e melhoraria a qualidade do ar junto às escolas."
    ),
    "O calendário de automobilismo inclui corridas de Fórmula 1, MotoGP e Stock Car.",
    "Tokenização e normalização influenciam diretamente a qualidade da busca semântica.",
    # Chinese
    "如何重置我的密码？",
    "这个模型支持一百多种语言，最多可以处理八千多个词元。",
    "今天下午三点在会议室讨论新产品的发布计划，请大家准时参加。",
    # German
    "Wie setze ich mein Passwort zurück?",
    "Der Zug nach München fährt heute wegen Bauarbeiten eine halbe Stunde später ab.",
    "Die Quantisierung verkleinert das Modell, darf aber die Qualität der Suche nicht "
    "verschlechtern.",
    # Mixed / code-like
    "query: ONNX Runtime CUDAExecutionProvider fallback 경고 메시지",
    "pip install embedfleet[cpu] && producer submit corpus.jsonl --model all-MiniLM-L6-v2",
)
"""At least 40 texts; the export quality gate embeds all of them."""

SAMPLE_LANGUAGES: tuple[str, ...] = ("en", "ko", "ja", "pt", "zh", "de")

LONG_SAMPLE: str = " ".join(SAMPLE_TEXTS * 16)
"""The samples joined and repeated: about 67,000 characters, more than 8,192 tokens in any
tokenizer; ``long_sample`` cuts it to a token count."""


def long_sample(tokenizer: Any, tokens: int) -> str:
    """LONG_SAMPLE cut after ``tokens`` tokens of ``tokenizer`` (a ``tokenizers.Tokenizer``
    without truncation; special tokens not counted)."""
    offsets = tokenizer.encode(LONG_SAMPLE, add_special_tokens=False).offsets
    return LONG_SAMPLE[: offsets[min(tokens, len(offsets)) - 1][1]]
