import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', 'bench/results/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-console': 'off',
      // ECMAScript `#` members are private at run time too; TS `private` is a compile-time hint. Constructors keep
      // `private`: there is no `#constructor`.
      'no-restricted-syntax': [
        'error',
        ...[
          'PropertyDefinition[accessibility=/^(private|protected)$/]',
          'TSAbstractPropertyDefinition[accessibility=/^(private|protected)$/]',
          'MethodDefinition[accessibility=/^(private|protected)$/][kind!="constructor"]',
          'TSAbstractMethodDefinition[accessibility=/^(private|protected)$/]',
          'AccessorProperty[accessibility=/^(private|protected)$/]',
          'TSParameterProperty[accessibility=/^(private|protected)$/]',
        ].map((selector) => ({
          selector,
          message: 'Use an ECMAScript `#` member, not TS private/protected (constructors excepted).',
        })),
      ],
    },
  },
  {
    files: ['**/*.mjs', '**/*.js'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
  {
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: { module: 'writable', require: 'readonly' } },
  },
);
